"""A small client for HAProxy's Runtime API (the admin socket) and its master CLI."""
import socket
import time
from pathlib import Path

from core import telemetry


class GatewayUnavailable(Exception):
    """HAProxy's socket does not answer (the gateway is not running)."""


def _span_name(line: str) -> str:
    """`haproxy.set map`: the command's first two words, without a master CLI's `@!<pid>` prefix."""
    words = line.split(" ", 3)
    if words[0].startswith("@"):
        words = words[1:]
    return "haproxy." + " ".join(words[:2])


class RuntimeAPI:
    """One connection per command: HAProxy answers and closes, which keeps the client trivially correct (~0.1 ms)."""

    def __init__(self, socket_path: str | Path, *, timeout: float = 5.0):
        self.socket_path = str(socket_path)
        self.timeout = timeout

    def command(self, line: str, *, payload: str | None = None) -> str:
        """Send one command (and a multi-line payload, for `add map ... <<`); return HAProxy's answer."""
        if "\n" in line or ";" in line:
            raise ValueError("one command per call, without newlines or ';'")
        data = line + "\n" if payload is None else f"{line} <<\n{payload.rstrip(chr(10))}\n\n"
        with telemetry.span(_span_name(line), child_only=True):
            return self._send(data)

    def _send(self, data: str) -> str:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            self._connect(sock)
            sock.sendall(data.encode())
            # The master CLI waits for more input otherwise; the admin socket answers either way.
            sock.shutdown(socket.SHUT_WR)
            chunks = []
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except (TimeoutError, FileNotFoundError, ConnectionRefusedError, ConnectionResetError) as exc:
            raise GatewayUnavailable(f"{self.socket_path}: {exc}") from exc
        finally:
            sock.close()
        return b"".join(chunks).decode(errors="replace")

    def _connect(self, sock):
        """A full accept queue answers a Unix socket's connect with EAGAIN at once (a timeout makes the socket
        non-blocking); wait for room like a blocking connect would, up to the timeout."""
        deadline = time.monotonic() + self.timeout
        pause = 0.001
        while True:
            try:
                sock.connect(self.socket_path)
                return
            except BlockingIOError:
                if time.monotonic() + pause > deadline:
                    raise TimeoutError(f"HAProxy's socket stayed busy for {self.timeout} s") from None
                time.sleep(pause)
                pause = min(pause * 2, 0.05)

    def ping(self) -> bool:
        try:
            return "Name:" in self.command("show info")
        except GatewayUnavailable:
            return False


class MasterCLI(RuntimeAPI):
    """The master-worker CLI: reload, list workers, and reach each worker (old ones included) with `@!<pid>`."""

    def workers(self) -> list[int]:
        """Pids of all live workers, current first, then those still draining after a reload."""
        pids = []
        for line in self.command("show proc").splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0].isdigit() and parts[1] == "worker":
                pids.append(int(parts[0]))
        return pids

    def on_worker(self, pid: int, line: str) -> str:
        return self.command(f"@!{pid} {line}")

    def reload(self) -> str:
        return self.command("reload")
