"""The workspaces' network policy on a local engine: iptables chains of this instance that keep its bridge away from
the host, private and link-local ranges and other workspaces, and that let only open-plan containers out.

Four chains per instance, jumped to only for packets entering from one of the instance's own bridges (one per
local engine), so the host's loopback and other instances' networks never pass through them:
- `<prefix>-IN` (from INPUT): a workspace reaches none of the host's own addresses (replies to the host's own
  connections, HAProxy's, pass);
- `<prefix>-FWD` (from DOCKER-USER): no other workspace (`<prefix>-ICC`: out through the bridge it came in by),
  no private, shared, link-local or multicast range, and no Internet unless the source address is listed in
- `<prefix>-OPEN`: one ACCEPT per claimed container whose plan has `internet_access = open`.
Everything refused is REJECTed (an immediate "connection refused"), so nothing ever leaves the machine.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shlex
import shutil
import subprocess
import threading

log = logging.getLogger(__name__)

# Never a workspace's destination: RFC 1918, shared (RFC 6598), link-local (cloud metadata), loopback, "this"
# network, multicast and reserved. IPv6 is off inside the containers (disable_ipv6), so fc00::/7 and fd00:ec2::254
# are unreachable there already.
BLOCKED_RANGES = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.168.0.0/16", "224.0.0.0/4", "240.0.0.0/4",
)
_lock = threading.Lock()


class NetworkPolicyError(Exception):
    """The rules could not be installed or checked."""


def chain_prefix(instance: str) -> str:
    """At most 23 characters, so that `-OPEN` keeps it within iptables' 28."""
    prefix = f"HEARTH-{instance}"
    if len(prefix) > 23 or not all(c.isalnum() or c in "-_" for c in instance):
        prefix = "HEARTH-" + hashlib.sha1(instance.encode()).hexdigest()[:12]
    return prefix


def _iptables(*args, check=True) -> subprocess.CompletedProcess:
    binary = shutil.which("iptables")
    if binary is None:
        raise NetworkPolicyError("iptables is not installed: the workspaces' network policy cannot be enforced")
    done = subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=15)
    if check and done.returncode != 0:
        raise NetworkPolicyError(f"iptables {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _chain_exists(chain: str) -> bool:
    return _iptables("-S", chain, check=False).returncode == 0


def network_rules_ensure(*, instance: str, bridge: str) -> None:
    """Install (or repair) the instance's chains and their jumps for `bridge`. Idempotent; the OPEN list survives.

    The IN and FWD chains are rewritten in one iptables-restore transaction, so no packet sees them half-made.
    """
    prefix = chain_prefix(instance)
    chain_in, chain_fwd, chain_open, chain_icc = f"{prefix}-IN", f"{prefix}-FWD", f"{prefix}-OPEN", f"{prefix}-ICC"
    rules = [
        "*filter",
        f":{chain_in} - [0:0]",
        f":{chain_fwd} - [0:0]",
        f"-A {chain_in} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        f"-A {chain_in} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {chain_in} -j REJECT --reject-with icmp-port-unreachable",
        f"-A {chain_fwd} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        f"-A {chain_fwd} -j {chain_icc}",
        *(f"-A {chain_fwd} -d {cidr} -j REJECT --reject-with icmp-port-unreachable" for cidr in BLOCKED_RANGES),
        f"-A {chain_fwd} -j {chain_open}",
        f"-A {chain_fwd} -j REJECT --reject-with icmp-port-unreachable",
        "COMMIT",
        "",
    ]
    with _lock:
        for chain in (chain_open, chain_icc):  # lists kept across a repair: claimed addresses, every engine's bridge
            if not _chain_exists(chain):
                _iptables("-N", chain)
        icc = ("-i", bridge, "-o", bridge, "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
        if _iptables("-C", chain_icc, *icc, check=False).returncode != 0:
            _iptables("-A", chain_icc, *icc)
        restore = shutil.which("iptables-restore")
        if restore is None:
            raise NetworkPolicyError("iptables-restore is not installed")
        done = subprocess.run([restore, "-w", "5", "--noflush"], input="\n".join(rules), capture_output=True,
                              text=True, timeout=15)
        if done.returncode != 0:
            raise NetworkPolicyError(f"iptables-restore of {prefix}: {done.stderr.strip()}")
        _stale_bridges_forget(chain_in, chain_fwd, chain_icc)
        for parent, chain in (("INPUT", chain_in), ("DOCKER-USER", chain_fwd)):
            if not _chain_exists(parent):
                _iptables("-N", parent)  # dockerd makes DOCKER-USER; a host without it gets it jumped from FORWARD
                _iptables("-I", "FORWARD", "1", "-j", parent)
            # The comment names the instance even when the chains' names are a hash of it.
            jump = ("-i", bridge, "-m", "comment", "--comment", f"hearth-instance={instance}", "-j", chain)
            if _iptables("-C", parent, *jump, check=False).returncode != 0:
                _iptables("-I", parent, "1", *jump)


def _stale_bridges_forget(chain_in: str, chain_fwd: str, chain_icc: str) -> None:
    """Drop the jumps and ICC lines of bridges that are gone (networks removed and made again get new bridges)."""
    for parent, chain in (("INPUT", chain_in), ("DOCKER-USER", chain_fwd), (chain_icc, "REJECT")):
        for line in _iptables("-S", parent, check=False).stdout.splitlines():
            parts = shlex.split(line)  # a comment is printed quoted
            if not line.startswith(f"-A {parent} -i ") or chain not in parts:
                continue
            if not os.path.exists(f"/sys/class/net/{parts[3]}"):
                _iptables("-D", *parts[1:], check=False)


def network_rules_remove(*, instance: str) -> None:
    """Remove the instance's chains and every jump to them (an uninstall, or a test's teardown)."""
    prefix = chain_prefix(instance)
    chains = [f"{prefix}-IN", f"{prefix}-FWD", f"{prefix}-OPEN", f"{prefix}-ICC"]
    with _lock:
        for parent in ("INPUT", "DOCKER-USER"):
            listed = _iptables("-S", parent, check=False)
            for line in listed.stdout.splitlines():
                parts = shlex.split(line)  # a comment is printed quoted
                if line.startswith(f"-A {parent} ") and parts[-1] in chains and parts[-2] == "-j":
                    _iptables("-D", *parts[1:], check=False)
        for chain in chains:
            if _chain_exists(chain):
                _iptables("-F", chain)
        for chain in chains:
            if _chain_exists(chain):
                _iptables("-X", chain)


def egress_open(*, instance: str, ip: str) -> None:
    """Let the container at `ip` reach the Internet (an open plan's claim); idempotent."""
    chain = f"{chain_prefix(instance)}-OPEN"
    with _lock:
        if _iptables("-C", chain, "-s", ip, "-j", "ACCEPT", check=False).returncode != 0:
            _iptables("-A", chain, "-s", ip, "-j", "ACCEPT")


def egress_close(*, instance: str, ip: str) -> None:
    """Withdraw `ip`'s Internet access (at release: the address goes to the next container); idempotent."""
    chain = f"{chain_prefix(instance)}-OPEN"
    with _lock:
        while _iptables("-D", chain, "-s", ip, "-j", "ACCEPT", check=False).returncode == 0:
            pass


def egress_sync(*, instance: str, allowed: set[str]) -> int:
    """Close every address in the OPEN list that is not in `allowed` (a release that died half-way, a lost
    container); returns how many were closed."""
    stale = egress_open_addresses(instance=instance) - allowed
    for ip in stale:
        egress_close(instance=instance, ip=ip)
    return len(stale)


def egress_open_addresses(*, instance: str) -> set[str]:
    chain = f"{chain_prefix(instance)}-OPEN"
    listed = _iptables("-S", chain, check=False).stdout.splitlines()
    return {line.split()[3].split("/")[0] for line in listed if line.startswith(f"-A {chain} -s ")}


def container_egress_set(*, container, internet_access: str) -> None:
    """Open or close the Internet for a claimed container (a Container row) per its plan's `internet_access`.

    `proxy` is treated as `none` until an allow-list egress proxy exists. Only for engines on this host.
    """
    from django.conf import settings

    url = getattr(container.node, "engine_url", "") or settings.DOCKER_HOST
    if not settings.HEARTH_NETWORK_POLICY or not url.startswith("unix://") or not container.address:
        return
    ip = container.address.rsplit(":", 1)[0]
    if internet_access == "open":
        egress_open(instance=settings.HEARTH_INSTANCE, ip=ip)
    else:
        egress_close(instance=settings.HEARTH_INSTANCE, ip=ip)
