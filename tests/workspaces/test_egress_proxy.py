"""The egress proxy of `proxy` plans (workspaces/egress_proxy.py, the PX/PXR/PXO rules of workspaces/network.py),
tried from claimed workspaces' shells on the real engine, with the real tinyproxy.

There is no Internet here, so the test makes a small one: a network namespace behind a veth pair holding two
addresses of TEST-NET-2 (198.51.100.0/24, documentation, never private), each with an HTTP server on port 80 and
one on 443. To the host and its containers they are routed, non-private, non-local addresses, exactly what a
package registry is; the allow-list names one of them by its IPv4 address (EGRESS_PROXY_ALLOW takes addresses as
well as names), so no resolver or /etc/hosts entry is touched on this shared machine. The host's end of the veth
(.1 of the same range) is a host address that is not private: the proxy must refuse it like 127.0.0.1.
"""
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured

from tests.conftest import require_service
from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import docker_exec, host_listener  # noqa: F401
from workspaces import network, services
from workspaces.egress_proxy import allow_patterns, egress_proxy_from_settings
from workspaces.models import Container, Session
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def _run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


@pytest.fixture
def internet():
    """Two "Internet" hosts in a network namespace of this instance; yields (host side, allowed, refused)."""
    tag = hashlib.sha1(settings.HEARTH_INSTANCE.encode()).hexdigest()[:8]
    base = 8 * (1 + int(tag, 16) % 30)  # a /29 of TEST-NET-2 per instance: two instances' tests never share it
    host_ip, allowed, refused = (f"198.51.100.{base + i}" for i in (1, 2, 3))
    ns, host_if, ns_if = f"hpx-{tag}", f"hpx{tag}h", f"hpx{tag}n"
    subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # a killed run's leftovers
    subprocess.run(["ip", "link", "del", host_if], capture_output=True)
    _run("ip", "netns", "add", ns)
    servers, docroot = [], Path(tempfile.mkdtemp(prefix="hearth-internet-"))
    try:
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/29", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        for ip in (allowed, refused):
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ip}/29", "dev", ns_if)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        for ip in (allowed, refused):
            (docroot / ip).mkdir()
            (docroot / ip / "index.html").write_text(f"page of {ip}\n")
            for port in (80, 443):  # 443 answers plain HTTP: a CONNECT tunnel carries any bytes
                servers.append(subprocess.Popen(
                    ["ip", "netns", "exec", ns, sys.executable, "-m", "http.server", str(port), "--bind", ip,
                     "--directory", str(docroot / ip)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for ip in (allowed, refused):
            for port in (80, 443):
                deadline = time.monotonic() + 10
                while True:
                    try:
                        socket.create_connection((ip, port), timeout=1).close()
                        break
                    except OSError:
                        assert time.monotonic() < deadline, f"the test server {ip}:{port} did not start"
                        time.sleep(0.1)
        yield host_ip, allowed, refused
    finally:
        for server in servers:
            server.terminate()
            server.wait(timeout=5)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(docroot, ignore_errors=True)


def _free_port_pair():
    """A port whose next one is free too (the open proxy's)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind(("0.0.0.0", 0))
            port = probe.getsockname()[1]
        try:
            with socket.socket() as second:
                second.bind(("0.0.0.0", port + 1))
            return port
        except OSError:
            continue
    raise AssertionError("no two free consecutive ports")


@pytest.fixture
def egress_proxy(settings, node, internet, host_listener):  # noqa: F811
    """The instance's proxy as `manage.py egress_proxy` runs it; allow-listed: the allowed host and two names of
    the host itself (an operator's mistake, or a registry name that a hostile resolver points home)."""
    require_service("tinyproxy", lambda: subprocess.run(["tinyproxy", "-v"], check=True, capture_output=True))
    host_ip, allowed, _ = internet
    settings.EGRESS_PROXY_PORT = _free_port_pair()
    settings.EGRESS_PROXY_ALLOW = [allowed, "localhost", host_ip, "*.example.org"]
    run_dir = Path(tempfile.mkdtemp(prefix="hearth-egress-"))
    settings.EGRESS_PROXY_RUN_DIR = run_dir
    proxy = egress_proxy_from_settings()  # installs the rules with the proxy's port, as at a start
    proxy.start()
    yield proxy
    proxy.stop()
    shutil.rmtree(run_dir, ignore_errors=True)


def _claimed(plan_slug, make_workspace, name):
    from tenants.models import Plan
    from tests.factories import MembershipFactory, TenantFactory

    membership = MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug=plan_slug)))
    opened = services.workspace_open(workspace=make_workspace(membership, name), user=membership.user)
    return Container.objects.select_related("node").get(pk=opened.session.container_id)


def _shell(container, script):
    code, out = docker_exec(runtime_for(container.node), container.engine_id, "sh", "-c", script)
    return out


def _get(container, url):
    """A plain `wget` in the workspace: busybox wget takes the proxy from http_proxy, like pip, npm and curl."""
    return _shell(container, f"timeout 5 wget -q -O- {url} 2>&1; echo exit=$?")


def _connect_through_proxy(container, target):
    """An HTTPS client's CONNECT to `target` through $HTTPS_PROXY, then (once the tunnel is up, as a client waits
    for the 200) a request inside the tunnel."""
    connect = f"CONNECT {target} HTTP/1.1\\r\\nHost: {target}\\r\\n\\r\\n"
    return _shell(container, 'p=${HTTPS_PROXY#http://}; p=${p%/}; '
                             f'(printf "{connect}"; sleep 1; printf "GET / HTTP/1.0\\r\\n\\r\\n"; sleep 2) '
                             '| timeout 6 nc -w 3 "${p%:*}" "${p#*:}" 2>&1; echo exit=$?')


def test_a_proxy_plan_reaches_an_allow_listed_host_through_the_proxy_and_no_other(
        node, tiny_template, make_workspace, egress_proxy, internet, host_listener):  # noqa: F811
    from tenants.models import Plan

    host_ip, allowed, refused = internet
    Plan.objects.filter(slug="free").update(internet_access="proxy")
    free = _claimed("free", make_workspace, "f")
    gateway = runtime_for(node).bridge_address()[1]
    env = _shell(free, "env")
    assert f"HTTP_PROXY=http://{gateway}:{egress_proxy.port}" in env, env
    assert f"https_proxy=http://{gateway}:{egress_proxy.port}" in env, env

    assert f"page of {allowed}" in _get(free, f"http://{allowed}/")
    out = _get(free, f"http://{refused}/")
    assert "403" in out and "page of" not in out, out  # tinyproxy: "403 Filtered"
    tunnel = _connect_through_proxy(free, f"{allowed}:443")
    assert "200 Connection established" in tunnel and f"page of {allowed}" in tunnel, tunnel
    tunnel = _connect_through_proxy(free, f"{refused}:443")
    assert "403" in tunnel and "page of" not in tunnel, tunnel
    # Around the proxy: the same host directly is refused on this host.
    direct = _shell(free, f"timeout 3 nc -w 2 {allowed} 80 </dev/null 2>&1; echo exit=$?")
    assert "refused" in direct.lower(), direct

    # Allow-listed names of the host itself (localhost, its non-private address) get nowhere: the proxy's own
    # connections to loopback, private and host addresses are refused by the PXO rules.
    port, accepted = host_listener
    for url in (f"http://localhost:{port}/", f"http://{host_ip}:{port}/"):
        out = _get(free, url)
        assert "exit=0" not in out, (url, out)
    assert accepted == []

    # Released: the address no longer reaches the proxy (the next container on it may be on any plan).
    session = Session.objects.get(container=free, ended_at__isnull=True)
    services.session_close(session=session, actor=session.user)
    assert free.address.rsplit(":", 1)[0] not in network.egress_proxy_addresses(instance=settings.HEARTH_INSTANCE)


def test_open_plans_get_the_open_proxy_and_plans_without_internet_no_proxy(
        node, tiny_template, make_workspace, egress_proxy, internet):
    from tenants.models import Plan

    _, allowed, refused = internet
    Plan.objects.filter(slug="team").update(internet_access="open")
    Plan.objects.filter(slug="starter").update(internet_access="none")
    team = _claimed("team", make_workspace, "t")
    starter = _claimed("starter", make_workspace, "s")
    # The same HTTP_PROXY, redirected to the unfiltered proxy for an open plan.
    assert f"page of {refused}" in _get(team, f"http://{refused}/")
    tunnel = _connect_through_proxy(team, f"{refused}:443")
    assert f"page of {refused}" in tunnel, tunnel
    # No Internet: the proxy refuses the connection, whatever the host.
    out = _get(starter, f"http://{allowed}/")
    assert "refused" in out.lower() and "page of" not in out, out


def test_the_reconciler_closes_proxy_access_left_to_an_address_without_a_proxy_session(node, tiny_template,
                                                                                     workspace, member):
    from workspaces import reconciler

    services.workspace_open(workspace=workspace, user=member.user)
    network.egress_proxy(instance=settings.HEARTH_INSTANCE, ip="172.31.255.253", proxy_port=settings.EGRESS_PROXY_PORT)
    reconciler.reconcile()
    assert "172.31.255.253" not in network.egress_proxy_addresses(instance=settings.HEARTH_INSTANCE)


def test_the_allow_list_takes_names_subdomains_and_addresses_and_refuses_anything_else():
    assert allow_patterns(["PyPI.org", "*.example.org", "198.51.100.2"]) == [
        r"^pypi\.org$", r"^([a-z0-9-]+\.)+example\.org$", r"^198\.51\.100\.2$"]
    for bad in ("https://pypi.org", "pypi.org:443", "*", "a..b", ".*"):
        with pytest.raises(ImproperlyConfigured, match="EGRESS_PROXY_ALLOW"):
            allow_patterns([bad])


def test_the_proxys_rules_are_scoped_to_its_own_uid_and_follow_a_changed_port(settings, node, tiny_template,
                                                                               egress_proxy):
    prefix = network.chain_prefix(settings.HEARTH_INSTANCE)

    def jumps(table, parent, chain):
        listed = subprocess.run(["iptables", "-t", table, "-S", parent], capture_output=True, text=True).stdout
        return [line for line in listed.splitlines() if line.endswith(f"-j {chain}")]

    uid = pwd.getpwnam(settings.EGRESS_PROXY_USER).pw_uid
    assert uid != os.geteuid()
    [output] = jumps("filter", "OUTPUT", f"{prefix}-PXO")
    assert f"--uid-owner {uid}" in output
    settings.EGRESS_PROXY_PORT += 10
    runtime_for(node).network_policy_ensure()
    [redirect] = jumps("nat", "PREROUTING", f"{prefix}-PXR")
    assert f"--dport {settings.EGRESS_PROXY_PORT} " in redirect, redirect
    settings.EGRESS_PROXY_PORT = 0  # no proxy: no proxy jumps left
    runtime_for(node).network_policy_ensure()
    assert jumps("nat", "PREROUTING", f"{prefix}-PXR") == jumps("filter", "OUTPUT", f"{prefix}-PXO") == []


def test_the_proxys_uid_reaches_no_loopback_or_host_address_over_ipv4_or_ipv6(settings, node, tiny_template,
                                                                              egress_proxy, internet):
    """What a name resolving to ::1, the host's fd00:: address or its non-private IPv4 address would make the proxy
    do: connect there as its own user. The allow-list takes no IPv6 literal and this host's resolver cannot be
    changed, so the connects are made directly as that user; root, the control, gets through."""
    host_ip, allowed, _ = internet
    listener = socket.socket(socket.AF_INET6)
    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # a dual-stack service on the host
    listener.bind(("::", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    connect = ("import socket, sys\n"
               "try:\n socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2).close(); print('open')\n"
               "except OSError as exc:\n print('refused', exc)")
    try:
        for target in ("::1", "127.0.0.1", host_ip):
            as_root = subprocess.run(["python3", "-c", connect, target, str(port)], capture_output=True,
                                     text=True).stdout
            as_proxy = subprocess.run(["runuser", "-u", settings.EGRESS_PROXY_USER, "--", "python3", "-c",
                                       connect, target, str(port)], capture_output=True, text=True).stdout
            assert as_root.startswith("open") and as_proxy.startswith("refused"), (target, as_root, as_proxy)
        as_proxy = subprocess.run(["runuser", "-u", settings.EGRESS_PROXY_USER, "--", "python3", "-c",
                                   connect, allowed, "80"], capture_output=True, text=True).stdout
        assert as_proxy.startswith("open"), as_proxy  # the Internet stays reachable for it
    finally:
        listener.close()
