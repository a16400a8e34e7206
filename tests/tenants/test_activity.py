"""The tenant's activity in the portal (Sessions, Audit trail) and the API (GET /api/v1/audit-log, the sessions'
egress): owners and admins see their own tenant's, members are refused, and nothing of another tenant shows."""
from datetime import UTC, datetime

import pytest
from django.db import transaction

from tenants import services
from tenants.audit import audit_record
from tenants.models import AuditLog
from tenants.portal import ACTIVITY_PAGE_SIZE
from tests.factories import MembershipFactory, UserFactory
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate

pytestmark = pytest.mark.django_db

SESSIONS, AUDIT = "/workspaces/sessions/", "/audit/"


def utc(*args):
    return datetime(*args, tzinfo=UTC)


class World:
    """Tenants A and B, each with an owner; A also with an admin and a member; a few sessions and audit rows each."""

    def __init__(self):
        staff = UserFactory(is_staff=True)
        self.owner_a, self.owner_b = UserFactory(email="owner@a.test"), UserFactory(email="owner@b.test")
        self.a = services.tenant_onboard(name="Alpha", slug="alpha", owner=self.owner_a, plan="team", actor=staff)
        self.b = services.tenant_onboard(name="Beta", slug="beta", owner=self.owner_b, plan="team", actor=staff)
        self.admin_a = MembershipFactory(tenant=self.a, role="admin", user=UserFactory(email="admin@a.test"))
        self.member_a = MembershipFactory(tenant=self.a, role="member", user=UserFactory(email="member@a.test"))
        services.tenant_rename(tenant=self.b, name="Beta secret name", actor=self.owner_b)
        template = WorkspaceTemplate.objects.get(slug="code-server")
        node = Node.objects.create(name="activity", engine_url="unix:///nonexistent.sock")
        rows = [(self.a, self.owner_a, "alpha-notes", utc(2026, 11, 2, 10), utc(2026, 11, 2, 11, 5), "idle", 3 << 20),
                (self.a, self.member_a.user, "member-ws", utc(2026, 11, 3, 9), None, "", 0),
                (self.b, self.owner_b, "beta-secret-ws", utc(2026, 11, 2, 9), utc(2026, 11, 2, 9, 0, 30), "closed",
                 512)]
        for n, (tenant, user, name, started, ended, reason, egress) in enumerate(rows):
            workspace = Workspace.objects.create(tenant=tenant, owner=user, template=template, name=name)
            container = Container.objects.create(node=node, template=template, name=f"activity-{n}",
                                                 state=Container.State.REMOVED if ended else Container.State.CLAIMED)
            Session.objects.create(tenant=tenant, workspace=workspace, user=user, container=container,
                                   started_at=started, last_activity_at=started, ended_at=ended, end_reason=reason,
                                   egress_bytes_metered=egress)


@pytest.fixture
def world():
    return World()


def login(client, user):
    client.force_login(user)
    return client


# --- the portal's Sessions page ----------------------------------------------------------------------------------


def test_owners_and_admins_see_every_session_of_their_tenant_only(client, world):
    for user in (world.owner_a, world.admin_a.user):
        page = login(client, user).get(SESSIONS)
        assert page.status_code == 200
        body = page.content.decode()
        assert "owner@a.test" in body and "member@a.test" in body and "alpha-notes" in body and "member-ws" in body
        assert "1 h 05 min" in body and "idle" in body and "3.0\xa0MB" in body and "live" in body
        assert "beta" not in body.lower() and "owner@b.test" not in body
        assert [s.workspace.name for s in page.context["page"]] == ["member-ws", "alpha-notes"]  # newest first
    body = login(client, world.owner_b).get(SESSIONS).content.decode()
    assert "beta-secret-ws" in body and "30 s" in body and "512" in body
    assert "alpha" not in body.lower() and "@a.test" not in body


def test_a_member_is_refused_the_sessions_and_audit_pages_and_sees_no_link(client, world):
    login(client, world.member_a.user)
    for url in (SESSIONS, AUDIT, f"{AUDIT}?action=member.joined"):
        page = client.get(url)
        refused = "Only the tenant&#x27;s owners and admins can do this."  # HTML-escaped
        assert page.status_code == 403 and refused in page.content.decode()
        assert "owner@a.test" not in page.content.decode() and "alpha-notes" not in page.content.decode()
    dashboard = client.get("/").content.decode()
    assert SESSIONS not in dashboard and f'href="{AUDIT}"' not in dashboard
    assert SESSIONS in login(client, world.owner_a).get("/").content.decode()


def test_signed_out_visitors_are_sent_to_sign_in(client, world):
    for url in (SESSIONS, AUDIT):
        response = client.get(url)
        assert response.status_code == 302 and "/accounts/login/" in response["Location"]


# --- the portal's Audit trail page -------------------------------------------------------------------------------


def test_the_audit_trail_shows_the_tenants_rows_newest_first_and_nothing_of_another(client, world):
    page = login(client, world.owner_a).get(AUDIT)
    assert page.status_code == 200
    rows = list(page.context["page"])
    assert rows == list(AuditLog.objects.filter(tenant_key=world.a.pk).order_by("-created_at", "-pk"))
    assert [row.action for row in rows] == ["tenant.onboarded"]
    body = page.content.decode()
    assert "Beta secret name" not in body and "tenant.renamed" not in body
    b_rows = list(login(client, world.owner_b).get(AUDIT).context["page"])
    assert {row.action for row in b_rows} == {"tenant.onboarded", "tenant.renamed"}
    assert all(row.tenant_key == world.b.pk for row in b_rows)


def test_the_audit_trail_filters_by_action_and_pages(client, world):
    with transaction.atomic():
        for n in range(ACTIVITY_PAGE_SIZE + 5):
            audit_record(tenant=world.a, actor=world.owner_a, action="member.invited", target=f"x{n}@a.test")
    login(client, world.admin_a.user)
    first = client.get(AUDIT, {"action": "member.invited"})
    assert first.status_code == 200 and len(first.context["page"]) == ACTIVITY_PAGE_SIZE
    assert {row.action for row in first.context["page"]} == {"member.invited"}
    assert 'href="?action=member.invited&amp;page=2"' in first.content.decode()
    second = client.get(AUDIT, {"action": "member.invited", "page": 2})
    assert [row.target for row in second.context["page"]] == [f"x{n}@a.test" for n in range(4, -1, -1)]
    choices = [value for value, _ in first.context["form"].fields["action"].choices]
    assert choices == ["", "member.invited", "tenant.onboarded"]  # the tenant's own actions only


@pytest.mark.parametrize("query, message", [
    ({"action": "tenant.renamed"}, "tenant.renamed is not an action of this audit trail."),  # B's, not A's
    ({"page": "0"}, "The page is a whole number, 1 or more."),
    ({"page": "two"}, "The page is a whole number, 1 or more."),
    ({"page": "9"}, "There is only 1 page."),
])
def test_a_bad_filter_or_page_is_a_clear_400(client, world, query, message):
    page = login(client, world.owner_a).get(AUDIT, query)
    assert page.status_code == 400 and message in page.content.decode()
    if "action" not in query:
        sessions = client.get(SESSIONS, query)
        assert sessions.status_code == 400 and message in sessions.content.decode()


# --- the API: GET /api/v1/audit-log, and the sessions' egress ---------------------------------------------------


def test_the_api_audit_log_is_the_tenants_own_for_owners_and_admins(make_api_client, world):
    owner_a = world.a.memberships.get(user=world.owner_a)
    for membership in (owner_a, world.admin_a):
        body = make_api_client(membership).get("/api/v1/audit-log").json()
        assert all(row["action"] != "tenant.renamed" for row in body)
        expected = AuditLog.objects.filter(tenant_key=world.a.pk).order_by("-created_at", "-pk")
        assert [row["id"] for row in body] == [row.pk for row in expected]
        assert set(body[0]) == {"id", "created_at", "actor", "action", "target", "data"}
    owner_b = world.b.memberships.get(user=world.owner_b)
    api_b = make_api_client(owner_b)
    body = api_b.get("/api/v1/audit-log").json()
    assert body and {row["id"] for row in body} == set(
        AuditLog.objects.filter(tenant_key=world.b.pk).values_list("pk", flat=True))
    renamed = api_b.get("/api/v1/audit-log", {"action": "tenant.renamed"}).json()
    assert [(row["action"], row["data"]) for row in renamed] == [
        ("tenant.renamed", {"from": "Beta", "to": "Beta secret name"})]
    assert api_b.get("/api/v1/audit-log", {"action": "tenant.onboarded", "limit": 0}).status_code == 400


def test_the_api_audit_log_refuses_members_and_unknown_verbs(make_api_client, world):
    api = make_api_client(world.member_a)
    response = api.get("/api/v1/audit-log")
    assert response.status_code == 403
    assert response.json()["detail"] == "Only the tenant's owners and admins can do this." and response.json()["code"]
    owner = make_api_client(world.a.memberships.get(user=world.owner_a))
    for verb in ("post", "patch", "put", "delete"):
        assert getattr(owner, verb)("/api/v1/audit-log").status_code == 405


def test_the_api_sessions_carry_their_egress_and_stay_within_the_tenant(make_api_client, world):
    owner_a = world.a.memberships.get(user=world.owner_a)
    body = make_api_client(owner_a).get("/api/v1/sessions").json()
    assert sorted(row["egress_bytes"] for row in body) == [0, 3 << 20]
    assert make_api_client(world.b.memberships.get(user=world.owner_b)).get("/api/v1/sessions").json()[0][
        "egress_bytes"] == 512
    # A member sees their own sessions only (as before), never the tenant's others.
    mine = make_api_client(world.member_a).get("/api/v1/sessions").json()
    assert [row["user"] for row in mine] == ["member@a.test"]


def test_a_tenant_without_sessions_is_told_so(client, world):
    owner = UserFactory()
    services.tenant_onboard(name="Gamma", slug="gamma", owner=owner, plan="team", actor=world.owner_a)
    page = login(client, owner).get(SESSIONS)
    assert page.status_code == 200 and "No session yet." in page.content.decode()
    assert "owner@a.test" not in page.content.decode() and "beta-secret-ws" not in page.content.decode()
