"""The workspaces' network policy (workspaces/network.py), tried from a claimed workspace's shell: the host's own
addresses, link-local metadata, private ranges and other workspaces are refused at once, and direct Internet egress
only for open plans. Every refused address is REJECTed on this host: nothing is sent off the machine."""
import socket
import time

import pytest
from django.conf import settings

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import docker_exec, host_listener  # noqa: F401
from workspaces import network, services
from workspaces.models import Container
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def _connect(container, host, port):
    """(refused, output, seconds) of a TCP connect from inside the container, bounded by a 3 s timeout."""
    started = time.monotonic()
    code, out = docker_exec(runtime_for(container.node), container.engine_id, "sh", "-c",
                            f"timeout 3 nc -w 2 {host} {port} </dev/null 2>&1; echo exit=$?")
    return "refused" in out.lower(), out, time.monotonic() - started


def _claimed(membership, make_workspace, name):
    opened = services.workspace_open(workspace=make_workspace(membership, name), user=membership.user)
    return Container.objects.select_related("node").get(pk=opened.session.container_id)


def test_a_workspace_reaches_neither_the_host_nor_metadata_nor_private_ranges_nor_another_workspace(
        node, tiny_template, tenant_e, make_workspace, host_listener):  # noqa: F811
    from tests.factories import MembershipFactory, TenantFactory

    port, accepted = host_listener
    a = _claimed(MembershipFactory(tenant=tenant_e), make_workspace, "a")
    b = _claimed(MembershipFactory(tenant=TenantFactory(plan=tenant_e.plan)), make_workspace, "b")
    _, gateway = docker_exec(runtime_for(node), a.engine_id, "sh", "-c", "ip route | awk '/default/{print $3}'")
    gateway = gateway.strip()
    # The listener is there: the host reaches it on the bridge's address.
    with socket.create_connection((gateway, port), timeout=2):
        pass
    b_ip, b_port = b.address.rsplit(":", 1)
    targets = {
        "host web port": (gateway, port),
        "cloud metadata": ("169.254.169.254", 80),
        "private 10/8": ("10.255.255.1", 80),
        "private 192.168/16": ("192.168.255.1", 80),
        "shared 100.64/10": ("100.64.0.1", 80),
        "another workspace": (b_ip, b_port),
    }
    for what, (host, target_port) in targets.items():
        refused, out, seconds = _connect(a, host, target_port)
        assert refused, (what, out)
        assert seconds < 5, (what, seconds)
    assert len(accepted) == 1  # only the host's own check above got through
    # From the host, B itself answers: it is the rule that refuses A, not a dead container.
    assert runtime_for(node).wait_ready(runtime_for(node).inspect(b.engine_id), timeout=5)


def test_only_an_open_plan_gets_direct_internet_egress(node, tiny_template, make_workspace):
    from tenants.models import Plan
    from tests.factories import MembershipFactory, TenantFactory

    Plan.objects.filter(slug="free").update(internet_access="proxy")
    Plan.objects.filter(slug="team").update(internet_access="open")
    free = _claimed(MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="free"))), make_workspace, "f")
    team = _claimed(MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="team"))), make_workspace, "t")
    opened = network.egress_open_addresses(instance=settings.HEARTH_INSTANCE)
    assert team.address.rsplit(":", 1)[0] in opened
    assert free.address.rsplit(":", 1)[0] not in opened
    # 192.0.2.0/24 is TEST-NET-1 (documentation): refused here, on this host, before any packet leaves it.
    refused, out, seconds = _connect(free, "192.0.2.1", 80)
    assert refused and seconds < 5, out
    # A released container's address loses its access (the next container on it may be on any plan).
    from workspaces.models import Session

    session = Session.objects.get(container=team, ended_at__isnull=True)
    services.session_close(session=session, actor=session.user)
    assert team.address.rsplit(":", 1)[0] not in network.egress_open_addresses(instance=settings.HEARTH_INSTANCE)


def test_the_rules_are_idempotent_and_scoped_to_the_instances_bridge(node, tiny_template, workspace, member):
    services.workspace_open(workspace=workspace, user=member.user)
    runtime = runtime_for(node)
    runtime.network_policy_ensure()
    runtime.network_policy_ensure()
    prefix = network.chain_prefix(settings.HEARTH_INSTANCE)
    import subprocess

    for parent, chain in (("INPUT", f"{prefix}-IN"), ("DOCKER-USER", f"{prefix}-FWD")):
        jumps = [line for line in subprocess.run(["iptables", "-S", parent], capture_output=True,
                                                 text=True).stdout.splitlines() if line.endswith(f"-j {chain}")]
        assert len(jumps) == 1, jumps
        assert " -i br-" in jumps[0], jumps  # only packets from this instance's bridge


def test_the_reconciler_closes_internet_access_left_to_an_address_without_an_open_session(node, tiny_template,
                                                                                            workspace, member):
    """A release that died between its unbind and its egress close (or a container found lost) leaves its address
    in the OPEN list, and the next container on that address, of any plan, would reach the Internet."""
    from workspaces import reconciler

    live = services.workspace_open(workspace=workspace, user=member.user).session.container  # an open plan
    network.egress_open(instance=settings.HEARTH_INSTANCE, ip="172.31.255.254")
    reconciler.reconcile()
    opened = network.egress_open_addresses(instance=settings.HEARTH_INSTANCE)
    assert "172.31.255.254" not in opened
    assert live.address.rsplit(":", 1)[0] in opened


def test_a_claim_grants_in_one_transaction_and_a_release_closes_every_copy(node, tiny_template, workspace,
                                                                           member):  # noqa: F811
    """The claim's fast path (`egress_grant`: one iptables-restore, no checks) puts the address in its plan's lists;
    were it listed already (the invariant broken), the copy is harmless and the close removes both."""
    instance, ip = settings.HEARTH_INSTANCE, "172.31.255.252"
    services.workspace_open(workspace=workspace, user=member.user)  # the instance's chains exist
    network.egress_grant(instance=instance, ip=ip, internet_access="open")
    network.egress_grant(instance=instance, ip=ip, internet_access="open")
    assert ip in network.egress_open_addresses(instance=instance)
    network.egress_grant(instance=instance, ip="172.31.255.251", internet_access="proxy")
    assert "172.31.255.251" in network.egress_proxy_addresses(instance=instance)
    assert "172.31.255.251" not in network.egress_open_addresses(instance=instance)
    network.egress_grant(instance=instance, ip="172.31.255.250", internet_access="none")
    assert "172.31.255.250" not in network.egress_open_addresses(instance=instance) | network.egress_proxy_addresses(
        instance=instance)
    for address in (ip, "172.31.255.251"):
        network.egress_close(instance=instance, ip=address)
    assert not {ip, "172.31.255.251"} & (network.egress_open_addresses(instance=instance)
                                        | network.egress_proxy_addresses(instance=instance))
