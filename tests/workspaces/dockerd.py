"""A dockerd of the tests' own (no Django test machinery: bench/chaos.py imports it before Django is set up)."""
import hashlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path


def _link_exists(name):
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


class ExtraDockerd:
    """A dockerd of its own on this machine: own socket, data root, exec root, pidfile, bridge and address pool.

    A second dockerd deletes the host's docker0 (breaking the main engine's default bridge) when started with
    `--bridge none`, and on every start after the first when started with `--default-address-pool` (moby's
    "clear stale bridge network" path): both seen here. So it gets a bridge of its own, no address pool, and
    its Hearth network an explicit subnet (`subnet`, registered in settings.HEARTH_NETWORK_SUBNETS) that cannot
    overlap the main engine's. `--iptables=false` keeps it out of the main engine's firewall rules (its networks
    are therefore not isolated; isolation is tested on the main engine). `restart()` restarts only this daemon,
    so reconciler tests need not restart the dockerd everybody else is using.
    """

    def __init__(self, name):
        self.name = name
        self.sock = f"/run/{name}.sock"
        self.url = f"unix://{self.sock}"
        digest = hashlib.sha1(name.encode()).hexdigest()
        self.octet = 200 + int(digest, 16) % 50
        self.bridge = f"hbr-{digest[:8]}"
        self.subnet = f"10.{self.octet}.128.0/24"
        self.proc = None
        self.log = None

    def _args(self):
        return [
            shutil.which("dockerd"),
            f"--host={self.url}",
            f"--data-root=/var/lib/{self.name}",
            f"--exec-root=/run/{self.name}",
            f"--pidfile=/run/{self.name}.pid",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
        ]

    def start(self, timeout=30):
        from workspaces.runtime import DockerRuntime

        if not _link_exists(self.bridge):
            subprocess.run(["ip", "link", "add", self.bridge, "type", "bridge"], check=True)
            subprocess.run(["ip", "addr", "add", f"10.{self.octet}.0.1/24", "dev", self.bridge], check=True)
            subprocess.run(["ip", "link", "set", self.bridge, "up"], check=True)
        self._stale_stop()
        had_docker0 = _link_exists("docker0")
        self.log = open(f"/tmp/{self.name}.log", "ab")
        self.proc = subprocess.Popen(self._args(), stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        probe = DockerRuntime(self.url, node_name=self.name, timeout=2)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    probe.ping()
                    if had_docker0 and not _link_exists("docker0"):
                        raise AssertionError(f"starting dockerd {self.name} deleted the main engine's docker0")
                    return
                except AssertionError:
                    raise
                except Exception:
                    if self.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"dockerd {self.name} did not start; see /tmp/{self.name}.log")
                    probe.close()
                    time.sleep(0.2)
        finally:
            probe.close()

    def _stale_stop(self, timeout=30):
        """A daemon left by an interrupted run still owns the socket: it would answer for ours (and stop() could
        not stop it). Stop it by its pidfile first."""
        try:
            pid = int(Path(f"/run/{self.name}.pid").read_text().strip())
            if f"--pidfile=/run/{self.name}.pid" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode():
                return  # the pid was reused by another process
            os.kill(pid, signal.SIGTERM)
        except (OSError, ValueError):
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except OSError:
                return
            time.sleep(0.2)
        os.kill(pid, signal.SIGKILL)

    def stop(self):
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        self.log.close()

    def restart(self):
        self.stop()
        self.start()

    def remove_bridge(self):
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
