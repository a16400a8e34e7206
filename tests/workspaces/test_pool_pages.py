"""Portal workspaces page and the admin pages of the pool."""
import pytest

from tests.factories import UserFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool
from workspaces.models import Container, Session, Workspace

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def test_portal_list_create_open_close(client, member, node, tiny_template):
    pool.pool_fill()
    client.force_login(member.user)
    page = client.get("/workspaces/")
    assert page.status_code == 200 and b"2 warm" in page.content

    r = client.post("/workspaces/create", {"name": "site", "template": "tiny"})
    assert r.status_code == 302
    workspace = Workspace.objects.get(owner=member.user, name="site")
    r = client.post(f"/workspaces/{workspace.pk}/open")
    assert r.status_code == 302 and workspace.host_key in r["Location"]
    session = Session.objects.get(workspace=workspace, ended_at__isnull=True)
    assert b"Close" in client.get("/workspaces/").content

    r = client.post(f"/workspaces/sessions/{session.pk}/close")
    assert r.status_code == 302
    session.refresh_from_db()
    assert session.end_reason == "closed"


def test_portal_errors_are_messages_and_other_tenants_invisible(client, member, node, tiny_template, workspace):
    stranger = UserFactory()
    from tests.factories import MembershipFactory

    MembershipFactory(user=stranger)
    client.force_login(stranger)
    assert workspace.name.encode() not in client.get("/workspaces/").content
    r = client.post(f"/workspaces/{workspace.pk}/open", follow=True)
    assert b"No such workspace" in r.content
    assert not Session.objects.exists()
    r = client.post("/workspaces/create", {"name": "x", "template": "nope"}, follow=True)
    assert b"Unknown template" in r.content


def test_admin_pages_and_actions(client, node, tiny_template):
    pool.pool_fill()
    admin = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(admin)
    overview = client.get("/admin/workspaces/workspacetemplate/pool/")
    assert overview.status_code == 200 and b"tiny" in overview.content
    for url in ["/admin/workspaces/workspacetemplate/", "/admin/workspaces/node/", "/admin/workspaces/container/",
                "/admin/workspaces/session/", "/admin/workspaces/workspace/"]:
        assert client.get(url).status_code == 200, url
    client.post("/admin/workspaces/workspacetemplate/",
                {"action": "pause_pools", "_selected_action": [tiny_template.pk]})
    tiny_template.refresh_from_db()
    assert tiny_template.pool_paused
    client.post("/admin/workspaces/node/", {"action": "drain", "_selected_action": [node.pk]})
    node.refresh_from_db()
    assert node.draining
    assert not Container.objects.filter(state=Container.State.WARM).exists()


def test_dashboard_card_counts_workspaces_and_readiness(client, member, node, tiny_template, workspace):
    pool.pool_fill()
    client.force_login(member.user)
    page = client.get("/").content.decode()
    card = page[page.index("card-workspaces"):]
    assert "Open now" in card and "Ready to open at once" in card and "/workspaces/" in card
