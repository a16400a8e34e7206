"""Activity is what the user's browser sends through the gateway (issue 12): an open WebSocket on which only the
container talks, or the API's heartbeat, no longer keeps a session from its idle reclaim.

Real HAProxy (the gateway's fixtures), real tiny containers, real PostgreSQL. The tiny image serves no WebSocket, so
the session's route is pointed at the fixtures' WebSocket upstream (a container that pushes a message every 0.2 s
on `/push`, as code-server's keep-alives and a busy terminal do) after the open.
"""
import asyncio
import threading
import time
from contextlib import contextmanager
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway, gateway_env, upstream  # noqa: F401
from workspaces import pool, services
from workspaces.gateway import routes
from workspaces.models import Session

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]


def _open_on_upstream(workspace, user, upstream):  # noqa: F811
    opened = services.workspace_open(workspace=workspace, user=user)
    routes.route_set(host_key=workspace.host_key, session_id=str(opened.session.pk), address=upstream.ws_address)
    return opened


@contextmanager
def browser_tab(gateway, opened):  # noqa: F811
    """An open WebSocket to the session's host, held by a thread of its own (the test's database connection stays
    in the main thread, where its transaction is); yields send(text)."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()

    async def connect():
        ws = await gateway.websocket(opened.session.workspace.host_key, opened.token, path="/push",
                                     ping_interval=None).__aenter__()
        await ws.recv()
        return ws

    ws = asyncio.run_coroutine_threadsafe(connect(), loop).result(10)

    def send(text):
        asyncio.run_coroutine_threadsafe(ws.send(text), loop).result(5)
        time.sleep(0.3)  # through HAProxy to the upstream

    try:
        yield send
    finally:
        asyncio.run_coroutine_threadsafe(ws.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)


def _long_ago(session):
    Session.objects.filter(pk=session.pk).update(last_activity_at=timezone.now() - timedelta(minutes=31))


def test_a_websocket_on_which_only_the_container_talks_is_idle(gateway, upstream, make_workspace, member, node,  # noqa: F811
                                                               tiny_template):
    pool.pool_fill()
    opened = _open_on_upstream(make_workspace(member, "quiet"), member.user, upstream)
    with browser_tab(gateway, opened):
        services.sessions_reclaim()  # the upgrade request was activity: the mark moves
        time.sleep(1.0)  # the container pushes 5 messages meanwhile
        _long_ago(opened.session)
        assert services.sessions_reclaim() == 1
    opened.session.refresh_from_db()
    assert opened.session.end_reason == "idle"


def test_a_browser_that_sends_keeps_its_session(gateway, upstream, make_workspace, member, node, tiny_template):  # noqa: F811
    pool.pool_fill()
    opened = _open_on_upstream(make_workspace(member, "busy"), member.user, upstream)
    with browser_tab(gateway, opened) as send:
        services.sessions_reclaim()
        _long_ago(opened.session)
        send("k" * 2000)  # the user types
        assert services.sessions_reclaim() == 0
    opened.session.refresh_from_db()
    assert opened.session.ended_at is None
    assert opened.session.last_activity_at > timezone.now() - timedelta(minutes=1)


def test_keep_alive_sized_traffic_from_the_browser_is_not_activity(gateway, upstream, make_workspace, member, node,  # noqa: F811
                                                                   tiny_template):
    pool.pool_fill()
    opened = _open_on_upstream(make_workspace(member, "tab"), member.user, upstream)
    with browser_tab(gateway, opened) as send:
        services.sessions_reclaim()
        _long_ago(opened.session)
        for _ in range(6):  # a left-open tab's keep-alives: a few small frames
            send("ka" * 5)
        assert services.sessions_reclaim() == 1


def test_the_heartbeat_alone_no_longer_keeps_a_session(gateway, make_workspace, member, node, tiny_template):  # noqa: F811
    from rest_framework.test import APIClient

    from tenants import services as tenant_services

    pool.pool_fill()
    opened = services.workspace_open(workspace=make_workspace(member, "hb"), user=member.user)
    _, token = tenant_services.api_token_create(membership=member, name="t", actor=member.user)
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    _long_ago(opened.session)
    response = api.post(f"/api/v1/sessions/{opened.session.pk}/heartbeat")
    assert response.status_code == 200 and response.json()["state"] == "live"
    assert services.sessions_reclaim() == 1
    opened.session.refresh_from_db()
    assert opened.session.end_reason == "idle"
