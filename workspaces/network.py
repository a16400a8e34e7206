"""The workspaces' network policy on a local engine: iptables chains of this instance that keep its bridge away from
the host, private and link-local ranges and other workspaces, let only open-plan containers out, and let proxy-plan
containers reach only the egress proxy (workspaces/egress_proxy.py), which itself reaches no private address.

Chains per instance, jumped to only for packets entering from one of the instance's own bridges (one per local
engine), so the host's loopback and other instances' networks never pass through them:
- `<prefix>-IN` (from INPUT): a workspace reaches none of the host's own addresses (replies to the host's own
  connections, HAProxy's, pass), except the egress proxy's port for the addresses listed in `<prefix>-PX` and the
  open proxy's port for those in `<prefix>-OPEN`;
- `<prefix>-FWD` (from DOCKER-USER): no other workspace (`<prefix>-ICC`: out through the bridge it came in by),
  no private, shared, link-local or multicast range, and no Internet unless the source address is listed in
- `<prefix>-OPEN`: one ACCEPT per claimed container whose plan has `internet_access = open`;
- `<prefix>-PX`: one ACCEPT per claimed container whose plan has `internet_access = proxy`;
- `<prefix>-PXR` (nat, from PREROUTING): an open-plan container's requests to the allow-list proxy go to the open
  proxy instead (every container has the same HTTP_PROXY: it is made before anyone's plan is known);
- `<prefix>-PXO` (from OUTPUT, for the proxy's own uid): the proxy reaches no private, loopback or host address,
  whatever an allow-listed name resolves to (its DNS servers excepted, port 53 only).
Everything refused is REJECTed (an immediate "connection refused"), so nothing ever leaves the machine.
"""
from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import logging
import os
import pwd
import shlex
import shutil
import subprocess
import threading
from typing import NamedTuple

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


class ProxyPolicy(NamedTuple):
    """What the rules need to know about the egress proxy: its port (the open proxy's is the next one) and uid."""

    port: int
    uid: int
    nameservers: tuple[str, ...] = ()


def chain_prefix(instance: str) -> str:
    """At most 23 characters, so that `-OPEN` keeps it within iptables' 28."""
    prefix = f"HEARTH-{instance}"
    if len(prefix) > 23 or not all(c.isalnum() or c in "-_" for c in instance):
        prefix = "HEARTH-" + hashlib.sha1(instance.encode()).hexdigest()[:12]
    return prefix


def _iptables(*args, check=True, program="iptables") -> subprocess.CompletedProcess:
    binary = shutil.which(program)
    if binary is None:
        raise NetworkPolicyError(f"{program} is not installed: the workspaces' network policy cannot be enforced")
    done = subprocess.run([binary, "-w", "5", *args], capture_output=True, text=True, timeout=15)
    if check and done.returncode != 0:
        raise NetworkPolicyError(f"{program} {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


def _restore(rules: list[str], program: str) -> None:
    restore = shutil.which(f"{program}-restore")
    if restore is None:
        raise NetworkPolicyError(f"{program}-restore is not installed")
    done = subprocess.run([restore, "-w", "5", "--noflush"], input="\n".join(rules), capture_output=True, text=True,
                          timeout=15)
    if done.returncode != 0:
        raise NetworkPolicyError(f"{program}-restore: {done.stderr.strip()}")


def _chain_exists(chain: str, table: str = "filter") -> bool:
    return _iptables("-t", table, "-S", chain, check=False).returncode == 0


def _chains(prefix: str) -> dict[str, str]:
    return {kind: f"{prefix}-{kind}" for kind in ("IN", "FWD", "OPEN", "ICC", "PX", "PXR", "PXO")}


def network_rules_ensure(*, instance: str, bridge: str, proxy: ProxyPolicy | None = None) -> None:
    """Install (or repair) the instance's chains and their jumps for `bridge`. Idempotent; the OPEN and PX lists
    survive. `proxy`: the egress proxy's port and uid (None: no proxy, `proxy` plans get no egress at all).

    The IN, FWD and PXO chains are rewritten in one iptables-restore transaction, so no packet sees them half-made.
    """
    c = _chains(chain_prefix(instance))
    proxy_in = []
    if proxy is not None:
        proxy_in = [f"-A {c['IN']} -p tcp --dport {proxy.port} -j {c['PX']}",
                    f"-A {c['IN']} -p tcp --dport {proxy.port + 1} -j {c['OPEN']}"]
    rules = [
        "*filter",
        f":{c['IN']} - [0:0]",
        f":{c['FWD']} - [0:0]",
        f":{c['PXO']} - [0:0]",
        f"-A {c['IN']} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        *proxy_in,
        f"-A {c['IN']} -p tcp -j REJECT --reject-with tcp-reset",
        f"-A {c['IN']} -j REJECT --reject-with icmp-port-unreachable",
        f"-A {c['FWD']} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        f"-A {c['FWD']} -j {c['ICC']}",
        *(f"-A {c['FWD']} -d {cidr} -j REJECT --reject-with icmp-port-unreachable" for cidr in BLOCKED_RANGES),
        f"-A {c['FWD']} -j {c['OPEN']}",
        f"-A {c['FWD']} -j REJECT --reject-with icmp-port-unreachable",
        *_proxy_output_rules(c["PXO"], proxy),
        "COMMIT",
        "",
    ]
    with _lock:
        for chain, table in ((c["OPEN"], "filter"), (c["ICC"], "filter"), (c["PX"], "filter"), (c["PXR"], "nat")):
            if not _chain_exists(chain, table):  # lists kept across a repair: claimed addresses, engines' bridges
                _iptables("-t", table, "-N", chain)
        icc = ("-i", bridge, "-o", bridge, "-j", "REJECT", "--reject-with", "icmp-port-unreachable")
        if _iptables("-C", c["ICC"], *icc, check=False).returncode != 0:
            _iptables("-A", c["ICC"], *icc)
        _restore(rules, "iptables")
        _proxy_ipv6_ensure(c, instance, proxy)
        _stale_bridges_forget(c)
        comment = ("-m", "comment", "--comment", f"hearth-instance={instance}")  # names it when chains are a hash
        jumps = [("filter", "INPUT", ("-i", bridge, *comment, "-j", c["IN"])),
                 ("filter", "DOCKER-USER", ("-i", bridge, *comment, "-j", c["FWD"]))]
        if proxy is not None:
            jumps += [("nat", "PREROUTING", ("-i", bridge, "-p", "tcp", "--dport", str(proxy.port), *comment,
                                             "-j", c["PXR"])),
                      ("filter", "OUTPUT", ("-m", "owner", "--uid-owner", str(proxy.uid), *comment, "-j", c["PXO"]))]
        for table, parent, jump in jumps:
            if parent == "DOCKER-USER" and not _chain_exists(parent):
                _iptables("-N", parent)  # dockerd makes DOCKER-USER; a host without it gets it jumped from FORWARD
                _iptables("-I", "FORWARD", "1", "-j", parent)
            if _iptables("-t", table, "-C", parent, *jump, check=False).returncode != 0:
                _iptables("-t", table, "-I", parent, "1", *jump)
        _stale_proxy_jumps_forget(c, proxy)


def _stale_proxy_jumps_forget(c: dict[str, str], proxy: ProxyPolicy | None) -> None:
    """Drop the proxy jumps made for another port or uid (a changed setting), or all of them when there is no proxy."""
    for program, table, parent, chain, option, wanted in (
            ("iptables", "nat", "PREROUTING", c["PXR"], "--dport", proxy and str(proxy.port)),
            ("iptables", "filter", "OUTPUT", c["PXO"], "--uid-owner", proxy and str(proxy.uid)),
            ("ip6tables", "filter", "OUTPUT", c["PXO"], "--uid-owner", proxy and str(proxy.uid))):
        for line in _iptables("-t", table, "-S", parent, check=False, program=program).stdout.splitlines():
            parts = shlex.split(line)  # a comment is printed quoted
            if parts[-2:] != ["-j", chain]:
                continue
            if wanted is None or option not in parts or parts[parts.index(option) + 1] != wanted:
                _iptables("-t", table, "-D", *parts[1:], check=False, program=program)


def _proxy_output_rules(chain: str, proxy: ProxyPolicy | None) -> list[str]:
    """The proxy's own connections: replies to its clients and its DNS pass; no private, loopback or host address
    (an allow-listed name resolving to 127.0.0.1, 10.x or the host's public address is refused, not a way in)."""
    if proxy is None:
        return []
    dns = [f"-A {chain} -d {ns} -p {proto} --dport 53 -j RETURN"
           for ns in proxy.nameservers for proto in ("udp", "tcp")]
    return [
        f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
        *dns,
        *(f"-A {chain} -d {cidr} -j REJECT --reject-with icmp-port-unreachable" for cidr in BLOCKED_RANGES),
        f"-A {chain} -m addrtype --dst-type LOCAL -j REJECT --reject-with icmp-port-unreachable",
    ]


def _proxy_ipv6_ensure(c: dict[str, str], instance: str, proxy: ProxyPolicy | None) -> None:
    """No IPv6 for the proxy's own connections (replies excepted): a name resolving to ::1 or the host's fd00::
    address is refused, and the proxy goes on to the name's IPv4 addresses."""
    chain = c["PXO"]
    _restore(["*filter", f":{chain} - [0:0]", f"-A {chain} -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN",
              f"-A {chain} -p tcp -j REJECT --reject-with tcp-reset", f"-A {chain} -j REJECT", "COMMIT", ""],
             "ip6tables")
    if proxy is not None:
        jump = ("-m", "owner", "--uid-owner", str(proxy.uid), "-m", "comment", "--comment",
                f"hearth-instance={instance}", "-j", chain)
        if _iptables("-C", "OUTPUT", *jump, check=False, program="ip6tables").returncode != 0:
            _iptables("-I", "OUTPUT", "1", *jump, program="ip6tables")


def proxy_policy(*, port: int, user: str) -> ProxyPolicy:
    """The proxy's port, the uid it runs as (it must be its own: the OUTPUT rules apply to every process of that
    uid) and the host's DNS servers (IPv4, from /etc/resolv.conf)."""
    try:
        uid = pwd.getpwnam(user).pw_uid
    except KeyError:
        raise NetworkPolicyError(f"the egress proxy's user {user!r} does not exist (apt-get install tinyproxy "
                                 "makes `tinyproxy`; EGRESS_PROXY_USER names another)") from None
    if uid == 0 or uid == os.geteuid():
        raise NetworkPolicyError(f"the egress proxy's user {user!r} must be its own (not root, not Hearth's): "
                                 "its connections to private addresses are refused")
    nameservers = []
    with contextlib.suppress(OSError), open("/etc/resolv.conf") as resolv:
        for line in resolv:
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "nameserver":
                with contextlib.suppress(ValueError):
                    if ipaddress.ip_address(parts[1]).version == 4:
                        nameservers.append(parts[1])
    return ProxyPolicy(port=port, uid=uid, nameservers=tuple(nameservers))


def _stale_bridges_forget(c: dict[str, str]) -> None:
    """Drop the jumps and ICC lines of bridges that are gone (networks removed and made again get new bridges)."""
    for table, parent, chain in (("filter", "INPUT", c["IN"]), ("filter", "DOCKER-USER", c["FWD"]),
                                 ("filter", c["ICC"], "REJECT"), ("nat", "PREROUTING", c["PXR"])):
        for line in _iptables("-t", table, "-S", parent, check=False).stdout.splitlines():
            parts = shlex.split(line)  # a comment is printed quoted
            if not line.startswith(f"-A {parent} -i ") or chain not in parts:
                continue
            if not os.path.exists(f"/sys/class/net/{parts[3]}"):
                _iptables("-t", table, "-D", *parts[1:], check=False)


def network_rules_remove(*, instance: str) -> None:
    """Remove the instance's chains and every jump to them (an uninstall, or a test's teardown)."""
    c = _chains(chain_prefix(instance))
    chains = set(c.values())
    with _lock:
        for table, parent in (("filter", "INPUT"), ("filter", "DOCKER-USER"), ("filter", "OUTPUT"),
                              ("nat", "PREROUTING")):
            listed = _iptables("-t", table, "-S", parent, check=False)
            for line in listed.stdout.splitlines():
                parts = shlex.split(line)  # a comment is printed quoted
                if line.startswith(f"-A {parent} ") and parts[-1] in chains and parts[-2] == "-j":
                    _iptables("-t", table, "-D", *parts[1:], check=False)
        for step in ("-F", "-X"):
            for chain in c.values():
                table = "nat" if chain == c["PXR"] else "filter"
                if _chain_exists(chain, table):
                    _iptables("-t", table, step, chain)
        _stale_proxy_jumps_forget(c, None)  # the IPv6 jump
        for step in ("-F", "-X"):
            _iptables(step, c["PXO"], check=False, program="ip6tables")


def _list_rules(instance: str, ip: str, port: int | None) -> dict[str, tuple[str, tuple[str, ...]]]:
    """The per-address rules, by list: (table, rule)."""
    c = _chains(chain_prefix(instance))
    rules = {"OPEN": ("filter", (c["OPEN"], "-s", ip, "-j", "ACCEPT")),
             "PX": ("filter", (c["PX"], "-s", ip, "-j", "ACCEPT"))}
    if port:
        rules["PXR"] = ("nat", (c["PXR"], "-s", ip, "-p", "tcp", "--dport", str(port), "-j", "REDIRECT",
                                "--to-ports", str(port + 1)))
    return rules


def _egress_set(*, instance: str, ip: str, lists: frozenset[str], proxy_port: int | None) -> None:
    """Put `ip` in exactly `lists` (of OPEN, PX, PXR); idempotent."""
    with _lock:
        for name, (table, rule) in _list_rules(instance, ip, proxy_port).items():
            present = _iptables("-t", table, "-C", *rule, check=False).returncode == 0
            if name in lists and not present:
                _iptables("-t", table, "-A", *rule)
            elif name not in lists:
                while present and _iptables("-t", table, "-D", *rule, check=False).returncode == 0:
                    pass


_PLAN_LISTS = {"open": frozenset({"OPEN", "PXR"}), "proxy": frozenset({"PX"})}


def egress_grant(*, instance: str, ip: str, internet_access: str, proxy_port: int | None = None) -> None:
    """After a claim (the granter of workspaces/egress_access.py): add `ip` to its plan's lists in ONE iptables-restore
    (both tables, one transaction), without the checks `_egress_set` runs per list (an exec each: 3-6 of them, 5-40 ms
    each on this machine). A claimed address is in no list: its release closed it (`egress_close`, the full
    idempotent path), and `egress_sync` closes what a crash left. Were it listed still (the reconciler granted it
    first), the rule would be there twice, and the close removes every copy."""
    rules = _list_rules(instance, ip, proxy_port)
    wanted = [rules[name] for name in sorted(_PLAN_LISTS.get(internet_access, ())) if name in rules]
    if not wanted:
        return
    lines = []
    for table in ("filter", "nat"):
        adds = [" ".join(("-A", *rule)) for t, rule in wanted if t == table]
        if adds:
            lines += [f"*{table}", *adds, "COMMIT"]
    with _lock:
        _restore(lines + [""], "iptables")


def egress_open(*, instance: str, ip: str, proxy_port: int | None = None) -> None:
    """Let the container at `ip` reach the Internet, directly and through the open proxy (an open plan's claim)."""
    _egress_set(instance=instance, ip=ip, lists=_PLAN_LISTS["open"], proxy_port=proxy_port)


def egress_proxy(*, instance: str, ip: str, proxy_port: int | None = None) -> None:
    """Let the container at `ip` reach the allow-list proxy, and nothing else outside (a proxy plan's claim)."""
    _egress_set(instance=instance, ip=ip, lists=_PLAN_LISTS["proxy"], proxy_port=proxy_port)


def egress_close(*, instance: str, ip: str, proxy_port: int | None = None) -> None:
    """Withdraw `ip`'s Internet and proxy access (at release: the address goes to the next container)."""
    _egress_set(instance=instance, ip=ip, lists=frozenset(), proxy_port=proxy_port)


def egress_sync(*, instance: str, allowed: set[str], proxied: set[str] = frozenset(),
                proxy_port: int | None = None) -> tuple[int, set[str]]:
    """Close every address in the OPEN list that is not in `allowed` and in the PX list that is not in `proxied`
    (a release that died half-way, a lost container). Returns how many were closed, and the addresses of `allowed`
    and `proxied` missing from their list (a grant that failed or never ran): the caller grants those under their
    sessions' row locks (workspaces/egress_access.py), since a session may end meanwhile."""
    listed_open, listed_proxy = egress_open_addresses(instance=instance), egress_proxy_addresses(instance=instance)
    stale = (listed_open - allowed) | (listed_proxy - proxied)
    for ip in stale:
        lists = _PLAN_LISTS["open"] if ip in allowed else _PLAN_LISTS["proxy"] if ip in proxied else frozenset()
        _egress_set(instance=instance, ip=ip, lists=lists, proxy_port=proxy_port)
    return len(stale), ((allowed - listed_open) | (proxied - listed_proxy)) - stale


def _listed(chain: str) -> set[str]:
    listed = _iptables("-S", chain, check=False).stdout.splitlines()
    return {line.split()[3].split("/")[0] for line in listed if line.startswith(f"-A {chain} -s ")}


def egress_open_addresses(*, instance: str) -> set[str]:
    return _listed(f"{chain_prefix(instance)}-OPEN")


def egress_proxy_addresses(*, instance: str) -> set[str]:
    return _listed(f"{chain_prefix(instance)}-PX")


def proxy_environment(*, gateway: str, port: int, subnet: str) -> dict[str, str]:
    """What a container is given so that its tools find the egress proxy (at its bridge's gateway address); its own
    address (in `subnet`: curl, pip and requests read CIDR in NO_PROXY, busybox wget reads no NO_PROXY) is direct."""
    url = f"http://{gateway}:{port}"
    local = f"localhost,127.0.0.1,::1,{subnet}"
    return {"HTTP_PROXY": url, "HTTPS_PROXY": url, "NO_PROXY": local,
            "http_proxy": url, "https_proxy": url, "no_proxy": local}


def egress_ensure(*, instance: str, ip: str, internet_access: str, proxy_port: int | None = None) -> None:
    """Put `ip` in exactly its plan's lists (none for `none`): the checked, idempotent path."""
    _egress_set(instance=instance, ip=ip, lists=_PLAN_LISTS.get(internet_access, frozenset()), proxy_port=proxy_port)


def container_egress_set(*, container, internet_access: str) -> None:
    """Open the Internet, the proxy or nothing for a container (a Container row) per its plan's `internet_access`:
    the full idempotent path (a release closes with it). Only for engines on this host."""
    ip = local_ip(container)
    if ip is None:
        return
    from django.conf import settings

    egress_ensure(instance=settings.HEARTH_INSTANCE, ip=ip, internet_access=internet_access,
                  proxy_port=settings.EGRESS_PROXY_PORT or None)


def local_ip(container) -> str | None:
    """The container's address, if the network policy applies to it (on, and an engine on this host)."""
    from django.conf import settings

    from workspaces.runtime.base import engine_is_local  # the runtime package imports this module

    url = getattr(container.node, "engine_url", "") or settings.DOCKER_HOST
    if not settings.HEARTH_NETWORK_POLICY or not engine_is_local(url) or not container.address:
        return None
    return container.address.rsplit(":", 1)[0]
