"""Engine outages (issue 12, item 9): node health (one rule), claims and opens that skip a node whose engine does not
answer (503 no_capacity with Retry-After when none is left), the engine-event follower that ends a dead container's
session and deletes its route within a second, its reconnect after an engine restart (with `since=`), and one
follower per node.

Real engines: the engine that is stopped and restarted is always the tests' own second dockerd (ExtraDockerd), never
the machine's shared one; `docker kill` only hits this test's own containers. Real HAProxy for the routes.
"""
import statistics
import time

import pytest
from django.conf import settings

from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway, gateway_env, wait_until  # noqa: F401
from tests.workspaces.test_pool_crash import _problems
from workspaces import pool, reconciler, services
from workspaces.engine_events import NodeFollower
from workspaces.gateway import routes
from workspaces.models import Container, Node, Session
from workspaces.pool import health
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.docker]
State = Container.State
KILL_BUDGET = 1.0  # seconds from `docker kill` to the session ended and its route gone
AGREE_BUDGET = 30.0  # seconds from the engine's return to sessions, routes and containers agreeing


def _node_on(url, name):
    return Node.objects.create(name=name, engine_url=url, cpus=64, memory_mb=64 * 1024, max_containers=300)


@pytest.fixture
def follower_of():
    """follower_of(node, **kw): a running NodeFollower (the one `manage.py engine_events` runs), stopped after."""
    started = []

    def start(node, **kwargs):
        follower = NodeFollower(node.pk, **kwargs).start()
        started.append(follower)
        assert follower.connected.wait(30), "the follower never connected"
        return follower

    yield start
    for follower in started:
        follower.stop()


@pytest.fixture
def engine_back(second_dockerd):
    """The second engine is running again after the test, whatever the test did to it."""
    yield second_dockerd
    if second_dockerd.proc is None:
        second_dockerd.start()


def _stop_engine_unnoticed(daemon, node):
    """Stop the engine with no follower running (its die events are lost, its rows stay WARM): only the
    reconciler's ticks, each a failed call, make the node unhealthy."""
    daemon.stop()
    for _ in range(settings.WORKSPACES_NODE_FAILED_CALLS):
        assert health.node_is_healthy(node.pk)
        assert node.name in reconciler.reconcile()["nodes_unreachable"]
    assert not health.node_is_healthy(node.pk)


# --- the health rule ------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_health_is_failed_calls_and_a_heartbeat(settings):
    from datetime import timedelta

    from django.utils import timezone

    settings.WORKSPACES_NODE_FAILED_CALLS, settings.WORKSPACES_NODE_HEARTBEAT_TIMEOUT = 2, 60
    fresh = _node_on("unix:///nowhere.sock", "fresh")
    assert health.node_is_healthy(fresh.pk)  # never asked yet: innocent until a call fails
    health.node_call_failed(fresh, "test", "refused")
    assert health.node_is_healthy(fresh.pk)  # one failure may be a blip
    health.node_call_failed(fresh, "test", "refused")
    assert not health.node_is_healthy(fresh.pk)
    assert "refused" in Node.objects.get(pk=fresh.pk).last_error
    health.node_answered(fresh)
    assert health.node_is_healthy(fresh.pk) and Node.objects.get(pk=fresh.pk).failed_calls == 0
    Node.objects.filter(pk=fresh.pk).update(last_seen_at=timezone.now() - timedelta(seconds=61))
    assert not health.node_is_healthy(fresh.pk)  # no answer for a minute: nobody can vouch for its containers
    assert not pool.usable_nodes().filter(pk=fresh.pk).exists()


@pytest.mark.django_db
def test_admin_node_list_shows_health(admin_client):
    ok = _node_on("unix:///ok.sock", "ok-node")
    bad = _node_on("unix:///bad.sock", "bad-node")
    Node.objects.filter(pk=bad.pk).update(failed_calls=5)
    page = admin_client.get("/admin/workspaces/node/")
    assert page.status_code == 200
    rows = {name: row for row in page.content.decode().split("<tr")[1:] for name in (ok.name, bad.name) if name in row}
    assert 'alt="True"' in rows[ok.name] and 'alt="False"' in rows[bad.name]


# --- claims skip an unhealthy node; none left: 503 no_capacity -------------------------------------------


@pytest.mark.slow
def test_with_every_engine_stopped_open_answers_503_no_capacity(live_db, pool_env, second_engine, engine_back,
                                                                 tiny_template, member, workspace, make_api_client):
    second = _node_on(second_engine.url, "second")  # the only node
    assert pool.pool_fill() == 2
    _stop_engine_unnoticed(engine_back, second)
    assert Container.objects.filter(node=second, state=State.WARM).count() == 2  # what the bug handed out

    response = make_api_client(member).post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert response.status_code == 503, response.content
    body = response.json()
    assert body["code"] == "no_capacity" and set(body) == {"code", "detail"}
    assert response["Retry-After"] == str(settings.WORKSPACES_RETRY_AFTER)
    # Nothing about the engine: no URL, no socket path, no exception text.
    for leak in (second_engine.url, "unix://", ".sock", "Error", "Traceback", "refused"):
        assert leak not in body["detail"]
    assert not Session.objects.exists()
    assert not Container.objects.filter(state=State.CLAIMED).exists()


@pytest.mark.slow
def test_claims_and_fills_skip_an_unhealthy_node(live_db, pool_env, node, second_engine, engine_back, tiny_template,
                                                  tenant_e, make_workspace):
    second = _node_on(second_engine.url, "second")
    # The second node's warm containers are the oldest: a claim that ignored health would take one of them.
    Node.objects.filter(pk=node.pk).update(enabled=False)
    assert pool.pool_fill() == 2
    Node.objects.filter(pk=node.pk).update(enabled=True)
    assert pool.pool_fill() == 2
    second_warm = set(Container.objects.filter(node=second, state=State.WARM).values_list("pk", flat=True))
    assert min(second_warm) < min(Container.objects.filter(node=node).values_list("pk", flat=True))
    _stop_engine_unnoticed(engine_back, second)

    m = MembershipFactory(tenant=tenant_e)
    session = services.workspace_open(workspace=make_workspace(m), user=m.user).session
    assert Container.objects.get(pk=session.container_id).node_id == node.pk
    failed_before = Container.objects.filter(node=second, state=State.FAILED).count()
    pool.pool_fill()  # refills main only: nothing is started (nor failed) on the dead engine
    assert Container.objects.filter(node=second, state__in=(State.PROVISIONING, State.FAILED)).count() == failed_before
    assert pool.placement_candidates(tiny_template) == [node]


@pytest.mark.django_db
def test_a_session_on_an_unhealthy_node_is_not_resumed(pool_env, node, tiny_template, workspace, member,
                                                       make_api_client):
    pool.pool_fill()
    api = make_api_client(member)
    assert api.post(f"/api/v1/workspaces/{workspace.pk}/open").status_code == 200
    for _ in range(settings.WORKSPACES_NODE_FAILED_CALLS):
        health.node_call_failed(node, "test", "the engine went away")
    again = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert again.status_code == 503 and again.json()["code"] == "node_unavailable"
    assert again["Retry-After"] == str(settings.WORKSPACES_RETRY_AFTER)
    assert Session.objects.get().ended_at is None  # nothing is ended on an engine that cannot be asked
    health.node_answered(node)
    assert api.post(f"/api/v1/workspaces/{workspace.pk}/open").json()["resumed"] is True


# --- the event stream: a killed container's session and route go within 1 s -------------------------------


def _ended_and_unrouted(session, host_key):
    return Session.objects.filter(pk=session.pk, ended_at__isnull=False).exists() and routes.route_get(host_key) is None


def _kill_and_time(node, session, host_key):
    container = Container.objects.get(pk=session.container_id)
    assert routes.route_get(host_key) is not None
    killed_at = time.monotonic()
    runtime_for(node).api.kill(container.engine_id)
    assert wait_until(lambda: _ended_and_unrouted(session, host_key), timeout=10, interval=0.005), \
        "the killed container's session or route outlived it"
    return time.monotonic() - killed_at


@pytest.mark.slow
def test_a_killed_containers_session_ends_and_its_route_goes_within_1s(live_db, pool_env, node, gateway,  # noqa: F811
                                                                       tiny_template, tenant_e, make_workspace,
                                                                       follower_of):
    follower = follower_of(node)
    pool.pool_fill()
    took = []
    for i in range(5):
        m = MembershipFactory(tenant=tenant_e)
        workspace = make_workspace(m, f"kill{i}")
        session = services.workspace_open(workspace=workspace, user=m.user).session
        took.append(_kill_and_time(node, session, workspace.host_key))
        session.refresh_from_db()
        assert session.end_reason == Session.EndReason.LOST
        assert Container.objects.get(pk=session.container_id).state == State.LOST
    print(f"docker kill -> session ended + route gone: p50 {statistics.median(took) * 1000:.0f} ms, "
          f"max {max(took) * 1000:.0f} ms over {len(took)} ({', '.join(f'{t * 1000:.0f}' for t in took)} ms)")
    assert max(took) < KILL_BUDGET
    assert wait_until(lambda: follower.handled == 5)  # each handled once (the release finishes after the route)


@pytest.mark.slow
def test_events_missed_while_no_follower_ran_are_read_since_the_last_one(live_db, pool_env, node, tiny_template,
                                                                         tenant_e, make_workspace, follower_of):
    """The reconnect's `since=` alone (no pass after connecting) picks up an event that happened in between."""
    pool.pool_fill()
    first = follower_of(node, reconcile_on_connect=False)
    m = MembershipFactory(tenant=tenant_e)
    one = services.workspace_open(workspace=make_workspace(m, "one"), user=m.user).session
    runtime_for(node).api.kill(Container.objects.get(pk=one.container_id).engine_id)
    assert wait_until(lambda: Session.objects.filter(pk=one.pk, ended_at__isnull=False).exists(), timeout=5)
    first.stop()
    assert first.cursor_ns and Node.objects.filter(pk=node.pk).update(events_cursor_ns=first.cursor_ns)

    two = services.workspace_open(workspace=make_workspace(m, "two"), user=m.user).session
    runtime_for(node).api.kill(Container.objects.get(pk=two.container_id).engine_id)  # nobody follows now
    time.sleep(0.5)
    assert Session.objects.get(pk=two.pk).ended_at is None
    follower_of(node, reconcile_on_connect=False)  # starts from the cursor the node keeps
    assert wait_until(lambda: Session.objects.filter(pk=two.pk, ended_at__isnull=False).exists(), timeout=5)


@pytest.mark.slow
def test_one_follower_per_node_and_a_standby_takes_over(live_db, pool_env, node, tiny_template, follower_of):
    first = follower_of(node, heartbeat=0.5)
    standby = NodeFollower(node.pk, heartbeat=0.5).start()
    try:
        time.sleep(1.5)
        assert not standby.connected.is_set() and standby.connects == 0
        first.stop()
        assert standby.connected.wait(10), "the standby never took over"
    finally:
        standby.stop()


# --- the engine restarted: the follower reconnects, and everything agrees within 30 s ------------------------


@pytest.mark.slow
def test_after_an_engine_restart_sessions_routes_and_containers_agree_within_30s(
        live_db, pool_env, second_engine, engine_back, gateway, tiny_template, tenant_e, make_workspace,  # noqa: F811
        follower_of):
    """Only the follower runs (no beat, no reconciler tick): its events and its pass after reconnecting do it all."""
    second = _node_on(second_engine.url, "second")
    pool.pool_fill()
    m = MembershipFactory(tenant=tenant_e)
    workspace = make_workspace(m)
    session = services.workspace_open(workspace=workspace, user=m.user).session
    follower = follower_of(second)
    assert routes.route_get(workspace.host_key) is not None

    stopped_at = time.monotonic()
    engine_back.stop()
    assert wait_until(lambda: _ended_and_unrouted(session, workspace.host_key), timeout=10)
    ended_after = time.monotonic() - stopped_at
    assert wait_until(lambda: not health.node_is_healthy(second.pk), timeout=10)
    unhealthy_after = time.monotonic() - stopped_at
    engine_back.start()
    back_at = time.monotonic()
    assert wait_until(lambda: not _problems([], gateway), timeout=AGREE_BUDGET, interval=0.1), _problems([], gateway)
    agreed_after = time.monotonic() - back_at
    assert wait_until(lambda: health.node_is_healthy(second.pk), timeout=AGREE_BUDGET)
    healthy_after = time.monotonic() - back_at
    print(f"engine stop (SIGTERM) -> session ended + route gone {ended_after:.2f} s, node unhealthy "
          f"{unhealthy_after:.2f} s; engine back -> all agree "
          f"{agreed_after:.2f} s, node healthy {healthy_after:.2f} s; follower connects {follower.connects}")
    assert Session.objects.get(pk=session.pk).end_reason == Session.EndReason.LOST
    assert follower.connects >= 2

    # The stream is followed again: a container killed now is noticed within the budget.
    pool.pool_fill()
    again = services.workspace_open(workspace=workspace, user=m.user).session
    assert Container.objects.get(pk=again.container_id).node_id == second.pk
    assert _kill_and_time(second, again, workspace.host_key) < KILL_BUDGET
