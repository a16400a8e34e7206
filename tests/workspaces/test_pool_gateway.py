"""Open → the gateway routes to the claimed container → close cuts the route; live routes restore a restarted gateway.

Real HAProxy (the gateway's own fixtures), real tiny containers, real PostgreSQL.
"""
from urllib.parse import urlsplit

import pytest

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway, gateway_env, start_gateway  # noqa: F401
from workspaces import pool, routing, selectors, services

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]


def test_open_routes_through_the_gateway_and_close_cuts_it(gateway, workspace, member, node, tiny_template):  # noqa: F811
    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    url = urlsplit(opened.url)
    assert url.hostname == f"{workspace.host_key}.localhost" and url.path == "/__hearth/open"

    entry = gateway.get(workspace.host_key, f"{url.path}?{url.query}")
    assert entry.status_code in (302, 303) and "hearth_gw=" in entry.headers.get("set-cookie", "")
    page = gateway.get(workspace.host_key, "/", token=opened.token)
    assert page.status_code == 200 and "hearth tiny workspace" in page.text

    services.session_close(session=opened.session, actor=member.user)
    after = gateway.get(workspace.host_key, "/", token=opened.token)
    assert after.status_code >= 400


def test_a_restarted_gateway_restores_live_routes(gateway_env, workspace, member, node, tiny_template):  # noqa: F811
    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    assert selectors.live_routes() == [(workspace.host_key, str(opened.session.pk), opened.session.container.address)]
    # A gateway started after the open gets the route from live_routes (GATEWAY_ROUTES_SOURCE).
    # Its own run dir: the module's gateway keeps its admin socket for the tests after this one.
    run_dir = gateway_env.with_name(gateway_env.name + "-r")
    run_dir.mkdir(exist_ok=True)
    gw = start_gateway(run_dir, routes_source=selectors.live_routes)
    try:
        page = gw.get(workspace.host_key, "/", token=opened.token)
        assert page.status_code == 200 and "hearth tiny workspace" in page.text
    finally:
        gw.process.stop()


def test_reconcile_puts_missed_routes_back_and_drops_stale_ones(gateway, workspace, member, node, tiny_template):  # noqa: F811
    from workspaces.gateway import routes

    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    # A route_set lost while HAProxy restarted, and a route whose route_delete failed.
    routes.route_delete(host_key=workspace.host_key)
    routes.route_set(host_key="stale0000001", session_id="999999", address="127.0.0.1:9")
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code >= 400

    stale = [r.host_key for r in routes.routes_list()]  # ours is missing; earlier tests' sessions are gone too
    assert "stale0000001" in stale and workspace.host_key not in stale
    assert routing.gateway_routes_sync() == (1, len(stale))
    assert [r.host_key for r in routes.routes_list()] == [workspace.host_key]
    page = gateway.get(workspace.host_key, "/", token=opened.token)
    assert page.status_code == 200 and "hearth tiny workspace" in page.text
    assert routing.gateway_routes_sync() == (0, 0)


def _egress_month(tenant):
    from metering.models import UsageRollup

    rollup = UsageRollup.objects.filter(tenant=tenant, period="month", meter__slug="egress_bytes").first()
    return rollup.quantity if rollup else 0


def test_egress_bytes_from_the_gateway_are_metered_once_including_after_the_close(gateway, workspace, member,  # noqa: F811
                                                                                   node, tiny_template):
    """The reclaim tick turns the gateway's bytes-out counter of each session into egress_bytes, counting every byte
    once: a second tick adds nothing, more traffic adds its bytes, and what the session sent before its close is
    counted by the tick after it (the counter outlives the route)."""
    from workspaces.gateway import routes

    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    session_id = str(opened.session.pk)
    for _ in range(3):
        assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    services.sessions_reclaim()
    first = routes.counters_read()[session_id]["bytes_out"]
    assert first > 0 and _egress_month(workspace.tenant) == first
    services.sessions_reclaim()
    assert _egress_month(workspace.tenant) == first  # the same counter again: nothing new

    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 200
    services.session_close(session=opened.session, actor=member.user)
    services.sessions_reclaim()
    final = routes.counters_read()[session_id]["bytes_out"]
    assert final > first and _egress_month(workspace.tenant) == final
