"""Egress metering: every byte leaving a workspace counted once (issue 11; issue 12, items 7 and 8).

Real HAProxy (the gateway's own fixtures), real tiny containers with their interface counters, real PostgreSQL.
The one stand-in: a session's route is pointed at the fixtures' WebSocket echo server where a WebSocket is needed
(the tiny image's busybox httpd speaks no WebSocket; code-server would).
"""
import asyncio
import os
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import docker_exec
from tests.workspaces.gateway_fixtures import gateway_env, start_gateway, upstream  # noqa: F401
from workspaces import pool, services
from workspaces.gateway import routes
from workspaces.gateway.process import gateway_keys_rotate, gateway_reload
from workspaces.models import Session
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def gateway(gateway_env):  # noqa: F811
    from workspaces import selectors

    gw = start_gateway(gateway_env, routes_source=selectors.live_routes)
    yield gw
    gw.process.stop()


def _egress(tenant):
    from metering.models import UsageRollup

    rollup = UsageRollup.objects.filter(tenant=tenant, period="month", meter__slug="egress_bytes").first()
    return rollup.quantity if rollup else 0


def _open(workspace, member, gateway, requests=0):
    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    for _ in range(requests):
        assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    return opened


def _gateway_bytes(session_id):
    return routes.counters_read()[session_id]["bytes_out"]


def test_a_tick_that_fails_midway_meters_nothing_and_the_next_meters_once(gateway, workspace, member, node,  # noqa: F811
                                                                          tiny_template, make_workspace, monkeypatch):
    """The sessions' bytes and the log's cursor commit together: a tick that fails after recording one session's
    bytes rolls them back with the cursor, and the next tick meters every line once. (Overlapping ticks take
    turns on the cursor's row lock.)"""
    from workspaces import egress

    other = make_workspace(member, name="other")
    first = _open(workspace, member, gateway, requests=2)
    second = _open(other, member, gateway, requests=1)
    assert gateway.get(other.host_key, "/", token=second.token).status_code == 200
    real, calls = egress.egress_record, []

    def failing_second(**kwargs):
        calls.append(kwargs["session_id"])
        if len(calls) == 2:
            raise RuntimeError("killed midway")
        return real(**kwargs)

    monkeypatch.setattr(egress, "egress_record", failing_second)
    with pytest.raises(RuntimeError):
        egress.gateway_log_meter(now=timezone.now())
    monkeypatch.undo()
    assert _egress(workspace.tenant) == 0
    services.sessions_reclaim()
    services.sessions_reclaim()
    total = _gateway_bytes(str(first.session.pk)) + _gateway_bytes(str(second.session.pk))
    assert _egress(workspace.tenant) == total > 0


def test_a_reload_and_a_restart_lose_and_repeat_nothing(gateway, workspace, member, node, tiny_template):  # noqa: F811
    """Bytes before and after a reload, and before and after a graceful restart, each billed once."""
    opened = _open(workspace, member, gateway, requests=3)
    session_id = str(opened.session.pk)
    per_request = _gateway_bytes(session_id) // 3
    assert per_request * 3 == _gateway_bytes(session_id)
    services.sessions_reclaim()
    gateway_reload(gateway.cfg)
    for _ in range(2):
        assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    services.sessions_reclaim()
    assert _egress(workspace.tenant) == 5 * per_request

    # A restart with no tick since the last requests: the log of the stopped gateway is read after it.
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    gateway.process.stop()
    gateway.process.start()
    services.sessions_reclaim()
    assert _egress(workspace.tenant) == 6 * per_request
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    services.sessions_reclaim()
    assert _gateway_bytes(session_id) == 7 * per_request == _egress(workspace.tenant)
    # The files of gateways that are gone and fully read are removed: one left, the running gateway's.
    assert len(list((gateway.cfg.run_dir / "egress").glob("*.log"))) == 1


def test_a_killed_gateway_loses_nothing_it_had_finished(gateway, workspace, member, node, tiny_template):  # noqa: F811
    """SIGKILL (a crash, the OOM killer) with no tick since the last requests: their lines are in the file HAProxy
    wrote, so the tick after the restart meters them (the workers' tables died with them)."""
    opened = _open(workspace, member, gateway, requests=2)
    per_request = _gateway_bytes(str(opened.session.pk)) // 2
    services.sessions_reclaim()
    for _ in range(3):
        assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    gateway.process.kill()
    gateway.process.start()
    services.sessions_reclaim()
    assert _egress(workspace.tenant) == 5 * per_request


def test_a_websocket_across_a_reload_is_metered_when_it_closes(gateway, upstream, workspace, member, node,  # noqa: F811
                                                              tiny_template):
    """A WebSocket opened before a reload ends in the old worker, which drops its table entry at once: its bytes
    used to be lost. The old worker writes its log line when it closes."""
    opened = _open(workspace, member, gateway)
    routes.route_set(host_key=workspace.host_key, session_id=str(opened.session.pk), address=upstream.ws_address)
    payload = "x" * 50_000

    async def run():
        async with gateway.websocket(workspace.host_key, opened.token) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            await asyncio.to_thread(gateway_reload, gateway.cfg)
            for _ in range(4):
                await ws.send(payload)
                assert await ws.recv() == payload

    services.sessions_reclaim()
    before = _egress(workspace.tenant)
    asyncio.run(run())
    time.sleep(0.5)  # the old worker writes the line as the stream ends
    services.sessions_reclaim()
    assert 4 * 50_000 < _egress(workspace.tenant) - before < 4 * 50_000 * 1.05


@pytest.mark.parametrize("change", ["reload", "key rotation"])
def test_a_websocket_held_by_the_old_worker_is_activity(gateway, upstream, workspace, member, node,  # noqa: F811
                                                        tiny_template, change):
    """An editor's WebSocket opened before a reload (or a key rotation: two reloads) lives on in the old worker;
    the session stays active past the idle timeout instead of being ended as idle."""
    opened = _open(workspace, member, gateway)
    session = opened.session
    routes.route_set(host_key=workspace.host_key, session_id=str(session.pk), address=upstream.ws_address)

    async def run():
        async with gateway.websocket(workspace.host_key, opened.token) as ws:
            await ws.send("hello")
            assert await ws.recv() == "hello"
            if change == "reload":
                await asyncio.to_thread(gateway_reload, gateway.cfg)
            else:
                await asyncio.to_thread(gateway_keys_rotate, gateway.cfg)
            await asyncio.sleep(1.5)
            # The new worker has not seen this session; the old one holds its WebSocket: open, so not idle at all.
            seen = (await asyncio.to_thread(routes.counters_read))[str(session.pk)]
            assert seen["active"] >= 1 and seen["idle_seconds"] == 0, seen
            long_ago = timezone.now() - timedelta(hours=3)
            await asyncio.to_thread(lambda: Session.objects.filter(pk=session.pk).update(last_activity_at=long_ago))
            await asyncio.to_thread(services.sessions_reclaim)
            await ws.send("still here")
            assert await ws.recv() == "still here"

    asyncio.run(run())
    session.refresh_from_db()
    assert session.ended_at is None, session.end_reason
    assert session.last_activity_at > timezone.now() - timedelta(minutes=1)


_SINK = """
import socket, sys
server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 9000)); server.listen(); print("ready", flush=True)
while True:
    conn, _ = server.accept(); total = 0
    while chunk := conn.recv(65536):
        total += len(chunk)
    conn.close(); print(total, flush=True)
"""


@pytest.fixture
def outside():
    """A host outside this one, as far as the workspace can tell: a network namespace behind a veth pair with a
    TEST-NET-2 address (outside every blocked range, so an open plan's packets are forwarded to it), running a
    TCP sink that prints how many bytes each connection brought."""
    tag = f"{os.getpid() % 60000:x}"
    ns, host_if, ns_if = f"heg{tag}", f"hegh{tag}", f"hegn{tag}"
    octet = 4 * (os.getpid() % 63) + 1
    host_ip, ns_ip = f"198.51.100.{octet}", f"198.51.100.{octet + 1}"

    def ip(*args):
        subprocess.run(["ip", *args], check=True, capture_output=True)

    ip("netns", "add", ns)
    try:
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        ip("-n", ns, "route", "add", "default", "via", host_ip)
        sink = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SINK], stdout=subprocess.PIPE,
                                text=True)
        assert sink.stdout.readline().strip() == "ready"
        yield ns_ip, sink
        sink.kill()
        sink.wait()
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_bytes_sent_out_directly_show_in_egress_bytes_once(gateway, workspace, member, node,  # noqa: F811
                                                           tiny_template, outside):
    """An open plan's workspace sends 200,000 bytes from its shell to a server outside: its interface counter has
    them (with their TCP/IP headers) and egress_bytes gets them once, next to the gateway's bytes, which the
    interface counter leaves out (the answers on the service port)."""
    address, sink = outside
    plan = workspace.tenant.plan
    plan.internet_access = "open"
    plan.save(update_fields=["internet_access"])
    opened = _open(workspace, member, gateway, requests=2)
    session_id = str(opened.session.pk)
    container = opened.session.container
    services.sessions_reclaim()
    gateway_only = _egress(workspace.tenant)
    assert gateway_only == _gateway_bytes(session_id) > 0  # the two pages through the gateway: nothing else

    code, out = docker_exec(runtime_for(container.node), container.engine_id, "sh", "-c",
                            f"dd if=/dev/zero bs=1000 count=200 2>/dev/null | nc -w 3 {address} 9000")
    assert code == 0 and sink.stdout.readline().strip() == "200000", out
    services.sessions_reclaim()
    direct = _egress(workspace.tenant) - gateway_only
    assert 200_000 < direct <= 200_000 * 1.1, direct  # the payload and its TCP/IP headers
    services.sessions_reclaim()
    assert _egress(workspace.tenant) == gateway_only + direct  # read again: nothing new

    # The release reads the counter one last time before the container (and its counter) is removed.
    docker_exec(runtime_for(container.node), container.engine_id, "sh", "-c",
                f"dd if=/dev/zero bs=1000 count=50 2>/dev/null | nc -w 3 {address} 9000")
    assert sink.stdout.readline().strip() == "50000"
    services.session_close(session=opened.session, actor=member.user)
    assert 50_000 < _egress(workspace.tenant) - gateway_only - direct <= 50_000 * 1.1
    session = Session.objects.get(pk=session_id)
    assert session.egress_bytes_metered == _egress(workspace.tenant)
    assert set(session.egress_marks) == {f"if:{container.pk}", "log"}


@pytest.mark.parametrize("one_statement", [True, False], ids=["one-statement claim", "claim in a transaction"])
def test_a_claim_starts_the_session_at_the_counter_read_when_the_container_was_ready(
        workspace, member, node, tiny_template, one_statement):  # noqa: F811
    """The baseline is read where the provisioning finishes, off the open's path; the claim makes it the session's
    first mark (both claim paths). A WARM container sends nothing while it waits: its counter has not moved."""
    from workspaces import egress

    if not one_statement:  # a concurrency limit takes the claim into a transaction (claiming.session_claim)
        plan = workspace.tenant.plan
        plan.max_concurrent_workspaces = 5
        plan.save(update_fields=["max_concurrent_workspaces"])
    pool.pool_fill()
    warm = tiny_template.containers.filter(state="warm").order_by("pk").first()
    assert warm.egress_baseline_bytes is not None
    assert egress.egress_baseline_read(warm) == warm.egress_baseline_bytes
    opened = services.workspace_open(workspace=workspace, user=member.user)
    assert opened.session.container_id == warm.pk
    expected = {f"if:{warm.pk}": warm.egress_baseline_bytes}
    assert opened.session.egress_marks == expected
    assert Session.objects.get(pk=opened.session.pk).egress_marks == expected
