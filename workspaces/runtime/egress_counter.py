"""A container's own egress counter: an iptables rule counter inside the container's network namespace that counts every
byte the container sends out of its interface, except its answers on its service port (the gateway's connections,
whose bytes the gateway counts as what reaches the client).

It lives and dies with the container's namespace, so it never outlives its container or follows an address to the
next one; the container has no CAP_NET_ADMIN and cannot change or reset it. Only for engines on this host.
"""
import re
import shutil
import subprocess

CHAIN = "HEARTH-EGRESS"
_COMMENT = "hearth-egress-sent"
_COUNTER_RE = re.compile(rf"^\[(\d+):(\d+)\] -A {CHAIN} .*{_COMMENT}")


class EgressCounterError(Exception):
    """The counter could not be installed or read."""


def _run(pid: int, binary: str, args: list[str], *, stdin: str | None = None) -> str:
    nsenter, path = shutil.which("nsenter"), shutil.which(binary)
    if nsenter is None or path is None:
        raise EgressCounterError(f"nsenter and {binary} are needed to count a container's egress")
    done = subprocess.run([nsenter, "-t", str(pid), "-n", path, *args], input=stdin, capture_output=True, text=True,
                          timeout=10)
    if done.returncode != 0:
        raise EgressCounterError(f"{binary} {' '.join(args)} in the namespace of pid {pid}: {done.stderr.strip()}")
    return done.stdout


def counter_install(*, pid: int, port: int) -> None:
    """(Re)make the counter in the namespace of `pid` (the container's init): the namespace's own mangle table,
    which nothing else there uses, rewritten whole in one transaction; starts at 0."""
    rules = "\n".join([
        "*mangle",
        *(f":{chain} ACCEPT [0:0]" for chain in ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")),
        f":{CHAIN} - [0:0]",
        f"-A POSTROUTING -j {CHAIN}",
        f"-A {CHAIN} -o lo -j RETURN",
        # The gateway (and the pool's health checks) connect to the service port; the answers are theirs.
        f"-A {CHAIN} -p tcp -m tcp --sport {int(port)} -j RETURN",
        f"-A {CHAIN} -m comment --comment {_COMMENT}",
        "COMMIT",
        "",
    ])
    _run(pid, "iptables-restore", ["-w", "5"], stdin=rules)


def counter_read(*, pid: int) -> int:
    """Bytes counted so far (IP packets, headers included)."""
    for line in _run(pid, "iptables-save", ["-c", "-t", "mangle"]).splitlines():
        m = _COUNTER_RE.match(line)
        if m:
            return int(m.group(2))
    raise EgressCounterError(f"no egress counter in the namespace of pid {pid}")
