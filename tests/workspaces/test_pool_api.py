"""REST API of workspaces and sessions: every verb, other tenants (404), roles, bad input."""
import json
import uuid
from pathlib import Path

import pytest

from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, services
from workspaces.models import Container, Session, Workspace

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


@pytest.fixture
def api(make_api_client, member):
    return make_api_client(member)


def test_templates_list_shows_enabled_templates_with_readiness(api, node, tiny_template):
    pool.pool_fill()
    body = api.get("/api/v1/templates").json()
    tiny = next(t for t in body if t["slug"] == "tiny")
    assert tiny["warm"] == 2 and tiny["pool_paused"] is False
    assert "code-server" not in {t["slug"] for t in body}  # disabled in this test


def test_create_list_get_open_heartbeat_close_delete(api, member, node, tiny_template):
    pool.pool_fill()
    response = api.post("/api/v1/workspaces", {"name": "demo", "template": "tiny"}, format="json")
    assert response.status_code == 201, response.content
    ws_id = response.json()["id"]
    assert [w["id"] for w in api.get("/api/v1/workspaces").json()] == [ws_id]
    assert api.get(f"/api/v1/workspaces/{ws_id}").json()["template"] == "tiny"

    opened = api.post(f"/api/v1/workspaces/{ws_id}/open")
    assert opened.status_code == 200, opened.content
    body = opened.json()
    assert set(body) >= {"session", "url", "expires_at"}
    session_id = body["session"]

    detail = api.get(f"/api/v1/sessions/{session_id}").json()
    assert detail["state"] == "live" and detail["node"] == "main" and detail["container"].startswith("hearth-")
    assert detail["ended_at"] is None and detail["end_reason"] == ""
    assert api.post(f"/api/v1/sessions/{session_id}/heartbeat").status_code == 200
    assert [s["id"] for s in api.get("/api/v1/sessions").json()] == [session_id]

    closed = api.post(f"/api/v1/sessions/{session_id}/close")
    assert closed.status_code == 200 and closed.json()["end_reason"] == "closed"
    assert api.post(f"/api/v1/sessions/{session_id}/heartbeat").status_code == 409

    assert api.delete(f"/api/v1/workspaces/{ws_id}").json()["code"] == "confirmation_required"
    assert api.delete(f"/api/v1/workspaces/{ws_id}?confirm=demo").status_code == 204
    assert api.get(f"/api/v1/workspaces/{ws_id}").status_code == 404


def test_bad_input(api, node, tiny_template):
    r = api.post("/api/v1/workspaces", {"name": "x", "template": "nope"}, format="json")
    assert r.status_code == 400 and r.json()["code"] == "unknown_template"
    r = api.post("/api/v1/workspaces", {"template": "tiny"}, format="json")
    assert r.status_code == 400 and r.json()["code"] == "invalid"
    tiny_template.enabled = False
    tiny_template.save()
    r = api.post("/api/v1/workspaces", {"name": "x", "template": "tiny"}, format="json")
    assert r.status_code == 400 and r.json()["code"] == "template_disabled"
    assert api.get("/api/v1/workspaces/999999").status_code == 404
    assert api.get(f"/api/v1/sessions/{uuid.uuid4()}").status_code == 404
    assert api.get("/api/v1/sessions/not-a-uuid").status_code == 404


def test_other_tenants_workspace_is_404_on_every_verb(make_api_client, workspace, member, node, tiny_template):
    pool.pool_fill()
    mine = make_api_client(member)
    session_id = mine.post(f"/api/v1/workspaces/{workspace.pk}/open").json()["session"]
    stranger = make_api_client(MembershipFactory(role="owner"))  # owner of another tenant
    for method, url in [
        ("get", f"/api/v1/workspaces/{workspace.pk}"),
        ("delete", f"/api/v1/workspaces/{workspace.pk}?confirm={workspace.name}"),
        ("post", f"/api/v1/workspaces/{workspace.pk}/open"),
        ("get", f"/api/v1/sessions/{session_id}"),
        ("post", f"/api/v1/sessions/{session_id}/close"),
        ("post", f"/api/v1/sessions/{session_id}/heartbeat"),
    ]:
        response = getattr(stranger, method)(url)
        assert response.status_code == 404, (method, url, response.status_code)
        assert response.json()["code"] == "not_found"
    assert stranger.get("/api/v1/workspaces").json() == []
    assert stranger.get("/api/v1/sessions").json() == []
    assert Session.objects.get(pk=session_id).ended_at is None
    assert Workspace.objects.get(pk=workspace.pk).deleted_at is None


def test_members_see_their_own_and_admins_see_all(make_api_client, workspace, member, node, tiny_template):
    colleague = MembershipFactory(tenant=member.tenant)
    admin = MembershipFactory(tenant=member.tenant, role="admin")
    assert make_api_client(colleague).get("/api/v1/workspaces").json() == []
    assert make_api_client(colleague).get(f"/api/v1/workspaces/{workspace.pk}").status_code == 404
    as_admin = make_api_client(admin)
    assert [w["id"] for w in as_admin.get("/api/v1/workspaces").json()] == [workspace.pk]
    # Admins see it but cannot open it: the files are the owner's.
    r = as_admin.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert r.status_code == 403 and r.json()["code"] == "not_owner"


def test_open_while_suspended_or_paused_is_refused(api, workspace, member, node, tiny_template):
    tiny_template.pool_paused = True
    tiny_template.save()
    r = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert r.status_code == 409 and r.json()["code"] == "pool_paused"
    tiny_template.pool_paused = False
    tiny_template.save()
    member.tenant.status = "suspended"
    member.tenant.save()
    r = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert r.status_code == 403 and r.json()["code"] == "tenant_suspended"
    assert not Container.objects.filter(state=Container.State.CLAIMED).exists()


def test_concurrency_limit_of_the_plan(make_api_client, tenant_e, node, tiny_template, make_workspace):
    from tenants.models import Plan

    tenant_e.plan = Plan.objects.get(slug="starter")  # one workspace at a time
    tenant_e.save()
    a = MembershipFactory(tenant=tenant_e)
    w1, w2 = make_workspace(a, "one"), make_workspace(a, "two")
    client = make_api_client(a)
    pool.pool_fill()
    assert client.post(f"/api/v1/workspaces/{w1.pk}/open").status_code == 200
    r = client.post(f"/api/v1/workspaces/{w2.pk}/open")
    assert r.status_code == 409 and r.json()["code"] == "concurrency_limit"
    assert Container.objects.filter(state=Container.State.WARM).count() == 1  # the refused claim rolled back


def test_a_failed_open_answers_without_exception_text_or_paths(api, workspace, node, tiny_template, caplog):
    # The user's storage path is a file, not a directory: binding it fails with an OSError naming host paths.
    pool.pool_fill()
    source = Path(workspace.storage_path)
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text("not a directory")
    try:
        response = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    finally:
        source.unlink()
    body = response.json()
    assert body["code"] == "open_failed", body
    assert str(source) not in body["detail"] and "Errno" not in body["detail"], body
    assert str(source) in caplog.text  # the details are in the server's log
    assert not Session.objects.filter(ended_at__isnull=True).exists()


def test_an_unreachable_engine_answers_503_without_its_url(api, workspace, pool_env, tiny_template, tmp_path,
                                                           settings):
    from workspaces.models import Node

    engine_url = f"unix://{tmp_path}/no-such-docker.sock"
    Node.objects.create(name="dead", engine_url=engine_url, cpus=8, memory_mb=8192)
    settings.WORKSPACES_COLD_OPEN_ASYNC = False  # the open waits for its start, as before
    response = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert response.status_code == 503
    body = response.json()
    assert body["code"] == "node_unavailable", body
    assert str(tmp_path) not in json.dumps(body) and "unix://" not in json.dumps(body), body
    assert "cannot talk to the Docker engine" in Node.objects.get(name="dead").last_error  # staff see it in admin

    # Answered at once instead (the default): the worker's start fails and the session says so, nothing more.
    settings.WORKSPACES_COLD_OPEN_ASYNC = True
    response = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
    assert response.status_code == 202 and response.json()["state"] == "starting"
    services.session_start(session_id=response.json()["session"])
    body = api.get(f"/api/v1/sessions/{response.json()['session']}").json()
    assert (body["state"], body["end_reason"]) == ("ended", "failed"), body
    assert str(tmp_path) not in json.dumps(body) and "unix://" not in json.dumps(body), body
