"""A cold open that waits without holding a web thread (issue 12): the API and the portal answer at once with the
session `starting`, the gateway shows its "starting" page, and a worker (workspaces.tasks.session_start) starts the
container, binds and routes it.

Real HAProxy (the gateway's fixtures), real tiny containers, real PostgreSQL. No Celery worker runs here: the test
calls `services.session_start`, which is all the task does (the enqueue itself goes to this instance's queue).
"""
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway, gateway_env  # noqa: F401
from workspaces import reconciler, services
from workspaces.gateway import routes
from workspaces.models import Container, Session, WorkspaceTemplate

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]


@pytest.fixture
def empty_pool(tiny_template):
    tiny_template.warm_min = tiny_template.warm_max = 0
    tiny_template.save()
    return tiny_template


def _token_of(url):
    return url.split("token=", 1)[1]


def test_the_api_answers_a_cold_open_at_once_and_the_worker_makes_it_live(gateway, node, empty_pool, member,  # noqa: F811
                                                                          workspace, make_api_client,
                                                                          django_capture_on_commit_callbacks,
                                                                          monkeypatch):
    from workspaces import tasks

    api = make_api_client(member)
    enqueued = []
    monkeypatch.setattr(tasks.session_start, "delay", enqueued.append)  # the broker is checked elsewhere
    started = time.monotonic()
    with django_capture_on_commit_callbacks(execute=True):
        response = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    answered_in = time.monotonic() - started
    assert response.status_code == 202, response.content
    body = response.json()
    assert body["state"] == "starting" and body["resumed"] is False
    assert not Container.objects.exists()  # the request started nothing: the worker does
    assert answered_in < 2.0, answered_in
    assert enqueued == [body["session"]]  # after the commit, for a worker

    session = api.get(f"/api/v1/sessions/{body['session']}").json()
    assert session["state"] == "starting" and session["container"] is None
    token = _token_of(body["url"])
    page = gateway.get(workspace.host_key, "/", token=token)
    assert page.status_code == 503 and "starting" in page.text

    assert Session.objects.get(pk=body["session"]).open_ms is None  # no container yet
    services.session_start(session_id=body["session"])  # the Celery task's body
    # From the request to the worker's container: the start is in it.
    started_session = Session.objects.select_related("container").get(pk=body["session"])
    assert started_session.open_ms >= (started_session.container.ready_at
                                       - started_session.container.created_at).total_seconds() * 1000 - 5

    session = api.get(f"/api/v1/sessions/{body['session']}").json()
    assert session["state"] == "live" and session["container"] and session["cold_start"] is True
    page = gateway.get(workspace.host_key, "/", token=token)  # the same tab's next reload
    assert page.status_code == 200 and "hearth tiny workspace" in page.text
    again = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert again.status_code == 200 and again.json()["session"] == body["session"] and again.json()["resumed"]


def test_opening_again_while_starting_answers_the_same_session_and_a_close_stops_the_start(
        gateway, node, empty_pool, member, workspace, make_api_client):  # noqa: F811
    api = make_api_client(member)
    first = api.post(f"/api/v1/workspaces/{workspace.pk}/open").json()
    second = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert second.status_code == 202
    assert second.json()["session"] == first["session"] and second.json()["state"] == "starting"

    assert api.post(f"/api/v1/sessions/{first['session']}/close").json()["state"] == "ended"
    assert routes.route_get(workspace.host_key) is None
    services.session_start(session_id=first["session"])  # the task arrives after the close: nothing starts
    assert not Container.objects.exists()
    assert Session.objects.get(pk=first["session"]).end_reason == "closed"


def test_a_start_that_fails_ends_the_session_and_the_portal_says_so(gateway, node, empty_pool, member, workspace,  # noqa: F811
                                                                    client):
    client.force_login(member.user)
    response = client.post(f"/workspaces/{workspace.pk}/open")
    assert response.status_code == 302 and response["Location"].startswith(f"http://{workspace.host_key}.")
    session = Session.objects.get(workspace=workspace)
    assert session.state == "starting"
    page = client.get("/workspaces/").content.decode()
    assert "starting a container since" in page and 'http-equiv="refresh"' in page

    WorkspaceTemplate.objects.filter(pk=empty_pool.pk).update(image="hearth/no-such-image:0")
    services.session_start(session_id=session.pk)
    session.refresh_from_db()
    assert session.end_reason == "failed"
    assert routes.route_get(workspace.host_key) is None  # the tab's reload says the session ended
    page = client.get("/workspaces/").content.decode()
    assert "could not start: open it again" in page and 'http-equiv="refresh"' not in page


def test_a_starting_session_survives_the_reconciler_and_is_given_up_when_its_worker_never_comes(
        gateway, node, empty_pool, member, workspace, settings):  # noqa: F811
    opened = services.workspace_open(workspace=workspace, user=member.user, start_later=True)
    assert opened.state == "starting"
    reconciler.reconcile()
    opened.session.refresh_from_db()
    assert opened.session.ended_at is None
    route = routes.route_get(workspace.host_key)
    assert route is not None and route.session_id == str(opened.session.pk) and route.address is None
    assert services.sessions_reclaim() == 0

    waited = settings.WORKSPACES_COLD_START_WAIT + settings.WORKSPACES_PROVISION_TIMEOUT
    Session.objects.filter(pk=opened.session.pk).update(started_at=timezone.now() - timedelta(seconds=waited + 1))
    assert services.sessions_reclaim() == 1
    opened.session.refresh_from_db()
    assert opened.session.end_reason == "failed"
    from metering.models import UsageEvent

    assert not UsageEvent.objects.filter(subject__session=str(opened.session.pk)).exists()  # no container: no time


def test_a_start_that_cannot_be_enqueued_ends_the_session_at_once(node, empty_pool, member, workspace, monkeypatch,
                                                                   django_capture_on_commit_callbacks):
    """The broker refusing is replaced here (the only thing mocked); in a web request the callback runs as the
    open's transaction commits, so the answer is this 503, not the 202."""
    from tenants.exceptions import Unavailable
    from workspaces import tasks

    def refuse(session_id):
        raise ConnectionError("broker down")

    monkeypatch.setattr(tasks.session_start, "delay", refuse)
    with pytest.raises(Unavailable) as refused, django_capture_on_commit_callbacks(execute=True):
        services.workspace_open(workspace=workspace, user=member.user, start_later=True)
    assert refused.value.status_code == 503 and refused.value.code == "open_failed"
    assert Session.objects.get(workspace=workspace).end_reason == "failed"


def test_through_a_real_celery_worker(live_db, gateway, node, empty_pool, member, workspace, make_api_client,  # noqa: F811
                                      tmp_path):
    """The whole path: the open commits and enqueues on commit, a real worker of this instance (its own process,
    the shared Redis under this instance's prefix) takes `session_start`, the tab's token then reaches the
    container through the gateway."""
    from tests.workspaces.test_pool_crash import _env, _kill, _purge_queue, _worker

    _purge_queue()
    worker = _worker(_env("", tmp_path / "failpoint"), tmp_path / "worker.log")
    try:
        api = make_api_client(member)
        response = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
        assert response.status_code == 202, response.content
        body = response.json()
        deadline = time.monotonic() + 60
        while api.get(f"/api/v1/sessions/{body['session']}").json()["state"] == "starting":
            assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
            time.sleep(0.2)
        assert api.get(f"/api/v1/sessions/{body['session']}").json()["state"] == "live"
        page = gateway.get(workspace.host_key, "/", token=_token_of(body["url"]))
        assert page.status_code == 200 and "hearth tiny workspace" in page.text
        services.session_close(session=Session.objects.get(pk=body["session"]), actor=member.user)
    finally:
        _kill(worker)


def test_a_start_lost_with_its_worker_is_enqueued_again_by_the_reclaim_tick(gateway, node, empty_pool, member,  # noqa: F811
                                                                            workspace, settings, monkeypatch):
    from workspaces import tasks

    enqueued = []
    monkeypatch.setattr(tasks.session_start, "delay", enqueued.append)  # the broker is checked elsewhere
    opened = services.workspace_open(workspace=workspace, user=member.user, start_later=True)
    enqueued.clear()  # the open's own enqueue (or its lack: the task is "lost")
    services.sessions_reclaim()
    assert enqueued == []  # too young: its worker may still be on it
    age = settings.WORKSPACES_STARTING_REQUEUE_AFTER + 1
    Session.objects.filter(pk=opened.session.pk).update(started_at=timezone.now() - timedelta(seconds=age))
    assert services.sessions_reclaim() == 0
    assert enqueued == [str(opened.session.pk)]
    opened.session.refresh_from_db()
    assert opened.session.ended_at is None and opened.session.container_id is None
