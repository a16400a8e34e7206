"""The egress proxy of `proxy` plans: Debian's tinyproxy with an allow-list, configured and run by Hearth.

Two tinyproxy processes listen on the host for the instance's bridges (the firewall, workspaces/network.py,
decides which container reaches which): the allow-list proxy on EGRESS_PROXY_PORT, for `proxy` plans, and an
unfiltered one on the next port, to which the open plans' requests to the first are redirected (every container
has the same HTTP_PROXY, set before anyone's plan is known). Both drop to EGRESS_PROXY_USER, whose own connections
the firewall keeps off private, loopback and host addresses whatever a name resolves to.
"""
from __future__ import annotations

import grp
import ipaddress
import logging
import os
import pwd
import re
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

log = logging.getLogger(__name__)

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_HOST = re.compile(rf"^(\*\.)?({_LABEL}(?:\.{_LABEL})*)$")


class EgressProxyError(Exception):
    """The proxy could not be configured or started."""


def allow_patterns(entries) -> list[str]:
    """tinyproxy filter lines (POSIX extended regular expressions, matched against the request's host name) for
    EGRESS_PROXY_ALLOW: `name` is that host exactly, `*.name` any host below it, an IPv4 address itself."""
    patterns = []
    for entry in entries:
        name = str(entry).strip().lower().rstrip(".")
        if not name:
            continue
        try:
            patterns.append("^" + re.escape(str(ipaddress.IPv4Address(name))) + "$")
            continue
        except ValueError:
            pass
        match = _HOST.match(name)
        if match is None:
            raise ImproperlyConfigured(f"EGRESS_PROXY_ALLOW: {entry!r} is not a host name, *.domain or IPv4 address")
        escaped = match.group(2).replace(".", r"\.")
        patterns.append(rf"^([a-z0-9-]+\.)+{escaped}$" if match.group(1) else rf"^{escaped}$")
    return patterns


@dataclass
class EgressProxy:
    """The two tinyproxy processes of this instance: render their configuration, start, reload, stop."""

    port: int
    allow: list[str]
    subnets: list[str]  # the clients: the instance's bridge subnets on the local engines
    run_dir: Path
    user: str = "tinyproxy"
    binary: str = "tinyproxy"
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def config_text(self, name: str) -> str:
        """`filtered` (the allow-list, ConnectPort 443) or `open` (no filter, the next port)."""
        try:
            group = grp.getgrgid(pwd.getpwnam(self.user).pw_gid).gr_name
        except KeyError:
            raise EgressProxyError(f"the egress proxy's user {self.user!r} does not exist "
                                   "(apt-get install tinyproxy makes `tinyproxy`)") from None
        lines = [
            f"# Written by Hearth (workspaces/egress_proxy.py) at each start: edits are lost. {name} proxy.",
            f"User {self.user}", f"Group {group}",
            f"Port {self.port if name == 'filtered' else self.port + 1}",
            "Timeout 600", "MaxClients 200", "LogLevel Connect",
            'ViaProxyName "hearth-egress"', "XTinyproxy No",
            *(f"Allow {subnet}" for subnet in self.subnets),
        ]
        if not self.subnets:
            lines.append("Deny 0.0.0.0/0")  # no bridge yet: nobody (tinyproxy allows everyone without Allow lines)
        if name == "filtered":
            lines += ["ConnectPort 443", f'Filter "{self.run_dir / "allow.filter"}"', "FilterType ere",
                      "FilterDefaultDeny Yes"]
        return "\n".join(lines) + "\n"

    def render(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.run_dir, 0o755)  # the proxy reads its filter again as its own user at a reload
        (self.run_dir / "allow.filter").write_text("\n".join(allow_patterns(self.allow)) + "\n")
        for name in ("filtered", "open"):
            (self.run_dir / f"{name}.conf").write_text(self.config_text(name))

    def start(self, *, timeout: float = 10.0) -> None:
        self.render()
        for name, port in (("filtered", self.port), ("open", self.port + 1)):
            try:
                self.procs[name] = subprocess.Popen([self.binary, "-d", "-c", str(self.run_dir / f"{name}.conf")],
                                                    stdin=subprocess.DEVNULL, start_new_session=True)
            except FileNotFoundError:
                self.stop()
                raise EgressProxyError(f"{self.binary} is not installed (apt-get install tinyproxy)") from None
            self._wait_listening(name, port, timeout)

    def _wait_listening(self, name: str, port: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs[name].poll() is not None:
                self.stop()
                raise EgressProxyError(f"tinyproxy ({name}, port {port}) exited at start with status "
                                       f"{self.procs[name].returncode}; see its output above")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise EgressProxyError(f"tinyproxy ({name}) did not listen on port {port} within {timeout:.0f} s")

    def reload(self) -> None:
        """Write the configuration again (a new allow-list, new subnets) and have both processes read it."""
        self.render()
        for proc in self.procs.values():
            proc.send_signal(signal.SIGUSR1)

    def exited(self) -> subprocess.Popen | None:
        return next((proc for proc in self.procs.values() if proc.poll() is not None), None)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def egress_proxy_from_settings() -> EgressProxy:
    """The instance's proxy for its local engines, whose firewall rules (with the proxy's) are ensured first."""
    from workspaces.models import Node
    from workspaces.pool.placement import node_ensure_default
    from workspaces.runtime import runtime_for
    from workspaces.runtime.base import LOCAL_ENGINE_SCHEME

    if not settings.EGRESS_PROXY_PORT:
        raise EgressProxyError("EGRESS_PROXY_PORT is 0: the egress proxy is off (`proxy` plans reach nothing)")
    node_ensure_default()
    subnets = []
    for node in Node.objects.filter(enabled=True, engine_url__startswith=LOCAL_ENGINE_SCHEME):
        address = runtime_for(node).bridge_address()  # also installs and checks the rules
        if address is not None and address[0] not in subnets:
            subnets.append(address[0])
    return EgressProxy(port=settings.EGRESS_PROXY_PORT, allow=list(settings.EGRESS_PROXY_ALLOW), subnets=subnets,
                       run_dir=Path(settings.EGRESS_PROXY_RUN_DIR), user=settings.EGRESS_PROXY_USER,
                       binary=settings.TINYPROXY_BIN)
