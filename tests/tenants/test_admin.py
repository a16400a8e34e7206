"""tenants.admin: the control plane acts through the services (audited) and cannot rewrite the audit trail."""
from datetime import timedelta

import pytest
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.urls import reverse
from django.utils import timezone

from tenants import services
from tenants.models import ApiToken, AuditLog, Invitation, OutboxEvent, Plan, Tenant
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:tenants_tenant_changelist"


@pytest.fixture
def staff(admin_user):
    return admin_user


def act(client, model, action, objects, **extra):
    data = {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **extra}
    return client.post(reverse(f"admin:tenants_{model}_changelist"), data, follow=not extra.get("_intermediate"))


def test_changelist_search_filters_and_columns(admin_client):
    acme = TenantFactory(name="Acme", slug="acme")
    MembershipFactory(tenant=acme, user=UserFactory(email="wile@acme.test"), role="owner")
    TenantFactory(name="Globex", slug="globex", synthetic=True, plan=Plan.objects.get(slug="free"))
    url = reverse(CHANGELIST)
    response = admin_client.get(url, {"q": "wile@acme"})
    assert response.status_code == 200
    assert list(response.context["cl"].result_list) == [acme]
    assert list(admin_client.get(url, {"q": "glob"}).context["cl"].result_list) == [Tenant.objects.get(slug="globex")]
    assert [t.slug for t in admin_client.get(url, {"synthetic__exact": "1"}).context["cl"].result_list] == ["globex"]
    free = Plan.objects.get(slug="free")
    assert [t.slug for t in admin_client.get(url, {"plan__id__exact": free.pk}).context["cl"].result_list] == [
        "globex"]
    assert [t.slug for t in admin_client.get(url, {"status__exact": "active"}).context["cl"].result_list] == [
        "globex", "acme"]
    content = admin_client.get(url).content.decode()
    for column in ("Slug", "Plan", "Status", "Synthetic", "Members"):
        assert column in content


def test_change_page_shows_members_and_audit_trail(admin_client, staff):
    owner = UserFactory(email="owner@acme.test")
    tenant = services.tenant_onboard(name="Acme", owner=owner, plan="team")
    response = admin_client.get(reverse("admin:tenants_tenant_change", args=[tenant.pk]))
    assert response.status_code == 200
    content = response.content.decode()
    assert "owner@acme.test" in content and "tenant.onboarded" in content
    assert f"?tenant_key={tenant.pk}" in content
    # The link filters by the never-reused key (a slug can name an offboarded tenant too).
    trail = admin_client.get(reverse("admin:tenants_auditlog_changelist"), {"tenant_key": tenant.pk})
    assert trail.status_code == 200 and {r.tenant_id for r in trail.context["cl"].result_list} == {tenant.pk}


def test_rename_in_admin_goes_through_the_service(admin_client, staff):
    tenant = services.tenant_onboard(name="Acme", owner=UserFactory(), plan="team")
    url = reverse("admin:tenants_tenant_change", args=[tenant.pk])
    response = admin_client.post(url, {"name": "Acme Corp", "memberships-TOTAL_FORMS": "1",
                                       "memberships-INITIAL_FORMS": "1", "memberships-MIN_NUM_FORMS": "0",
                                       "memberships-MAX_NUM_FORMS": "1000"})
    assert response.status_code == 302, response.content.decode()[:2000]
    tenant.refresh_from_db()
    assert tenant.name == "Acme Corp"
    row = AuditLog.objects.get(tenant=tenant, action="tenant.renamed")
    assert row.actor == staff


def test_no_delete_of_tenants_in_admin(admin_client):
    tenant = TenantFactory()
    assert admin_client.post(reverse("admin:tenants_tenant_delete", args=[tenant.pk]), {"post": "yes"}).status_code \
        == 403
    assert Tenant.objects.filter(pk=tenant.pk).exists()


def test_suspend_and_resume_actions_call_the_services(admin_client, staff):
    a, b = TenantFactory(), TenantFactory()
    response = admin_client.post(reverse(CHANGELIST), {"action": "suspend", ACTION_CHECKBOX_NAME: [a.pk, b.pk]})
    assert response.status_code == 200 and b"reason" in response.content  # the intermediate form
    assert Tenant.objects.filter(status="suspended").count() == 0
    response = act(admin_client, "tenant", "suspend", [a, b], apply="1", reason="unpaid invoice")
    assert response.status_code == 200
    assert set(Tenant.objects.values_list("status", flat=True)) == {"suspended"}
    rows = AuditLog.objects.filter(action="tenant.suspended").order_by("tenant_slug")
    assert [r.tenant_slug for r in rows] == sorted([a.slug, b.slug])
    assert all(r.actor == staff and r.data["reason"] == "unpaid invoice" for r in rows)
    assert OutboxEvent.objects.filter(type="tenant.suspended").count() == 2
    act(admin_client, "tenant", "resume", [a])
    a.refresh_from_db()
    b.refresh_from_db()
    assert (a.status, b.status) == ("active", "suspended")
    assert AuditLog.objects.get(action="tenant.resumed").tenant == a


def test_change_plan_action_picks_the_plan_on_an_intermediate_form(admin_client, staff):
    tenant = TenantFactory()
    MembershipFactory(tenant=tenant, role="owner")
    response = admin_client.post(reverse(CHANGELIST), {"action": "change_plan", ACTION_CHECKBOX_NAME: [tenant.pk]})
    assert response.status_code == 200 and b"Enterprise" in response.content
    enterprise = Plan.objects.get(slug="enterprise")  # staff may choose non-public plans
    response = act(admin_client, "tenant", "change_plan", [tenant], apply="1", plan=enterprise.pk)
    assert response.status_code == 200
    tenant.refresh_from_db()
    assert tenant.plan == enterprise
    row = AuditLog.objects.get(tenant=tenant, action="tenant.plan_changed")
    assert row.data == {"from": "team", "to": "enterprise"} and row.actor == staff


def test_change_plan_action_reports_the_service_refusal(admin_client):
    tenant = TenantFactory()
    for role in ("owner", "member"):
        MembershipFactory(tenant=tenant, role=role)
    free = Plan.objects.get(slug="free")
    response = act(admin_client, "tenant", "change_plan", [tenant], apply="1", plan=free.pk)
    assert "seats" in response.content.decode()
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team"
    assert not AuditLog.objects.filter(action="tenant.plan_changed").exists()


def test_overview_page(admin_client):
    TenantFactory(plan=Plan.objects.get(slug="pro"))
    TenantFactory(synthetic=True)
    old = TenantFactory(status="suspended")
    Tenant.objects.filter(pk=old.pk).update(created_at=timezone.now() - timedelta(days=3))
    index = admin_client.get(reverse("admin:index"))
    assert reverse("admin:tenants_overview").encode() in index.content
    response = admin_client.get(reverse("admin:tenants_overview"))
    assert response.status_code == 200
    by_plan = {p.slug: p.n_tenants for p in response.context["by_plan"]}
    assert by_plan["pro"] == 1 and by_plan["team"] == 2 and by_plan["free"] == 0
    assert dict(response.context["by_status"]) == {"active": 2, "suspended": 1, "offboarded": 0}
    signups = response.context["signups"]
    assert len(signups) == 30 and signups[-1][1] == 2 and signups[-4][1] == 1
    assert response.context["signups_total"] == 3
    assert response.context["list_price_mrr"] == 10.0  # pro; synthetic and suspended tenants don't count


def test_overview_needs_staff(client):
    response = client.get(reverse("admin:tenants_overview"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_audit_log_is_read_only(admin_client):
    tenant = services.tenant_onboard(name="Acme", owner=UserFactory())
    row = AuditLog.objects.get(tenant=tenant)
    assert admin_client.get(reverse("admin:tenants_auditlog_changelist")).status_code == 200
    change_url = reverse("admin:tenants_auditlog_change", args=[row.pk])
    page = admin_client.get(change_url)
    assert page.status_code == 200 and b'name="action"' not in page.content and b"_save" not in page.content
    response = admin_client.post(change_url, {"action": "forged", "target": "x", "data": "{}"})
    assert response.status_code == 403
    assert admin_client.get(reverse("admin:tenants_auditlog_add")).status_code == 403
    assert admin_client.post(reverse("admin:tenants_auditlog_delete", args=[row.pk]), {"post": "yes"}).status_code \
        == 403
    response = admin_client.post(reverse("admin:tenants_auditlog_changelist"),
                                 {"action": "delete_selected", ACTION_CHECKBOX_NAME: [row.pk], "post": "yes"})
    row.refresh_from_db()
    assert row.action == "tenant.onboarded"
    assert AuditLog.objects.filter(pk=row.pk).exists()


def test_audit_log_filtered_by_tenant(admin_client):
    a = services.tenant_onboard(name="Acme", owner=UserFactory())
    services.tenant_onboard(name="Globex", owner=UserFactory())
    response = admin_client.get(reverse("admin:tenants_auditlog_changelist"), {"tenant_slug": a.slug})
    assert [r.tenant_slug for r in response.context["cl"].result_list] == [a.slug]


def test_revoke_token_action(admin_client, staff):
    membership = MembershipFactory()
    token, _ = services.api_token_create(membership=membership, name="ci", actor=membership.user)
    page = admin_client.get(reverse("admin:tenants_apitoken_change", args=[token.pk]))
    assert page.status_code == 200 and b"_save" not in page.content
    act(admin_client, "apitoken", "revoke", [token])
    token.refresh_from_db()
    assert token.revoked_at is not None
    assert AuditLog.objects.get(action="api_token.revoked").actor == staff
    assert not ApiToken.objects.filter(revoked_at__isnull=True).exists()


def test_revoke_invitation_action(admin_client, staff):
    owner = MembershipFactory(role="owner")
    invitation, _ = services.member_invite(tenant=owner.tenant, email="x@example.test", actor=owner.user)
    act(admin_client, "invitation", "revoke", [invitation])
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    assert AuditLog.objects.get(action="member.invitation_revoked").actor == staff
    response = act(admin_client, "invitation", "revoke", [invitation])  # twice: the service refuses, clearly
    assert "already used or revoked" in response.content.decode()
    assert admin_client.get(reverse("admin:tenants_invitation_add")).status_code == 403
    assert Invitation.objects.count() == 1


def test_outbox_retry_action(admin_client):
    tenant = services.tenant_onboard(name="Acme", owner=UserFactory())
    event = OutboxEvent.objects.get(tenant=tenant)
    OutboxEvent.objects.filter(pk=event.pk).update(next_attempt_at=timezone.now() + timedelta(hours=1),
                                                   last_error="boom", attempts=3)
    delivered = OutboxEvent.objects.create(type="x", payload={}, dispatched_at=timezone.now())
    response = act(admin_client, "outboxevent", "retry", [event, delivered])
    assert "1 undelivered event(s) due now" in response.content.decode()
    event.refresh_from_db()
    delivered.refresh_from_db()
    assert event.next_attempt_at is None and event.dispatched_at is None
    assert delivered.dispatched_at is not None
    assert admin_client.get(reverse("admin:tenants_outboxevent_change", args=[event.pk])).status_code == 200


def test_plan_edit_is_audited(admin_client, staff):
    plan = Plan.objects.get(slug="starter")
    url = reverse("admin:tenants_plan_change", args=[plan.pk])
    assert admin_client.get(url).status_code == 200
    data = {f: getattr(plan, f) for f in ("name", "monthly_price_cents", "currency", "daily_minutes",
                                           "monthly_hours", "storage_mb", "seats", "max_concurrent_workspaces",
                                           "idle_timeout_minutes", "max_session_hours",
                                           "overage_price_cents_per_hour", "sort_order",
                                           "internet_access", "cpu_weight", "io_weight", "cpus", "memory_mb",
                                           "pids_limit")}
    data = {k: ("" if v is None else v) for k, v in data.items()}
    data.update(monthly_hours=6, public="on")
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content.decode()[:3000]
    plan.refresh_from_db()
    assert plan.monthly_hours == 6
    row = AuditLog.objects.get(action="plan.changed", target="starter")
    assert row.data == {"monthly_hours": [5, 6]} and row.actor == staff
    assert admin_client.post(reverse("admin:tenants_plan_delete", args=[plan.pk]), {"post": "yes"}).status_code \
        == 403


def test_other_admin_pages_render(admin_client):
    owner = MembershipFactory(role="owner")
    services.member_invite(tenant=owner.tenant, email="x@example.test", actor=owner.user)
    services.api_token_create(membership=owner, name="t", actor=owner.user)
    for name in ("invitation", "apitoken", "outboxevent", "tenantexport", "membership", "plan", "user"):
        response = admin_client.get(reverse(f"admin:tenants_{name}_changelist"))
        assert response.status_code == 200, name


def test_adding_a_tenant_onboards_it(admin_client, staff, settings):
    url = reverse("admin:tenants_tenant_add")
    assert b"owner_email" in admin_client.get(url).content
    response = admin_client.post(url, {"name": "Initech", "owner_email": "Peter@Initech.test", "plan": "pro",
                                       "synthetic": "on"})
    tenant = Tenant.objects.get(slug="initech")
    assert response.status_code == 302 and response["Location"].endswith(f"/{tenant.pk}/change/")
    assert tenant.plan.slug == "pro" and tenant.synthetic
    assert tenant.memberships.get().user.email == "peter@initech.test"
    assert tenant.memberships.get().role == "owner"
    assert (settings.STORAGE_ROOT / "tenants" / "initech").is_dir()
    assert AuditLog.objects.get(tenant=tenant, action="tenant.onboarded").actor == staff
    assert OutboxEvent.objects.filter(tenant=tenant, type="tenant.onboarded").exists()


def test_onboarding_in_admin_shows_service_errors_on_the_form(admin_client):
    TenantFactory(slug="taken")
    before = Tenant.objects.count()
    response = admin_client.post(reverse("admin:tenants_tenant_add"),
                                 {"name": "X", "owner_email": "x@example.test", "plan": "free", "slug": "taken"})
    assert response.status_code == 200 and "is taken" in response.content.decode()
    assert Tenant.objects.count() == before


def test_user_admin_adds_and_edits_email_users(admin_client):
    response = admin_client.post(reverse("admin:tenants_user_add"), {
        "email": "New.Staff@Hearth.test", "usable_password": "true",
        "password1": "a long enough pass 42", "password2": "a long enough pass 42"})
    assert response.status_code == 302, response.content.decode()[:3000]
    from tenants.models import User

    user = User.objects.get(email="new.staff@hearth.test")
    assert user.check_password("a long enough pass 42")
    again = admin_client.post(reverse("admin:tenants_user_add"), {
        "email": "NEW.staff@hearth.test", "usable_password": "true",
        "password1": "a long enough pass 42", "password2": "a long enough pass 42"})
    assert again.status_code == 200 and b"already has an account" in again.content
    page = admin_client.get(reverse("admin:tenants_user_change", args=[user.pk]))
    assert page.status_code == 200 and b"new.staff@hearth.test" in page.content.lower()


def test_offboard_action_exports_then_deletes_and_keeps_the_trail(admin_client, staff):
    owner = UserFactory(email="owner@acme.test")
    tenant = services.tenant_onboard(name="Acme", owner=owner, plan="team")
    response = admin_client.post(reverse(CHANGELIST), {"action": "offboard", ACTION_CHECKBOX_NAME: [tenant.pk]})
    assert b"OFFBOARD" in response.content
    response = act(admin_client, "tenant", "offboard", [tenant], apply="1", confirm="nope")
    assert b"Type OFFBOARD to confirm" in response.content and Tenant.objects.filter(pk=tenant.pk).exists()
    act(admin_client, "tenant", "offboard", [tenant], apply="1", confirm="OFFBOARD")
    assert not Tenant.objects.filter(pk=tenant.pk).exists()
    from tenants.models import TenantExport

    export = TenantExport.objects.get(tenant_slug="acme")
    assert list(export.owners.all()) == [owner]
    assert AuditLog.objects.filter(tenant_slug="acme", action="tenant.offboarded", actor=staff).exists()
    assert AuditLog.objects.filter(tenant_slug="acme", action="tenant.onboarded").exists()  # the trail stays
    download = admin_client.get(reverse("admin:tenants_tenantexport_download", args=[export.pk]))
    assert download.status_code == 200 and download["Content-Disposition"].startswith("attachment")
    assert b"".join(download.streaming_content)[:2] == b"\x1f\x8b"  # gzip


def test_export_download_serves_only_files_under_the_export_root(admin_client, tmp_path):
    from tenants.models import TenantExport

    outside = tmp_path / "secret.txt"
    outside.write_text("not an export")
    export = TenantExport.objects.create(tenant_slug="x", path=str(outside), size_bytes=13)
    assert admin_client.get(reverse("admin:tenants_tenantexport_download", args=[export.pk])).status_code == 404
    assert admin_client.get(reverse("admin:tenants_tenantexport_download", args=[999999])).status_code == 404


def test_deactivating_and_deleting_a_user_in_admin_go_through_the_services(admin_client, staff):
    from django.contrib.auth import get_user_model

    membership = MembershipFactory()
    user = membership.user
    url = reverse("admin:tenants_user_change", args=[user.pk])
    form = admin_client.get(url).context["adminform"].form
    data = {k: v for k, v in form.initial.items() if v is not None and k not in ("password", "groups",
                                                                                "user_permissions", "is_active")}
    data.update({"email": user.email, "date_joined_0": f"{user.date_joined:%Y-%m-%d}",
                 "date_joined_1": f"{user.date_joined:%H:%M:%S}"})
    data.pop("date_joined", None)
    data.pop("last_login", None)
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    user.refresh_from_db()
    assert not user.is_active
    assert AuditLog.objects.filter(tenant=membership.tenant, action="user.deactivated", actor=staff).count() == 1

    other = MembershipFactory(tenant=membership.tenant).user
    act(admin_client, "user", "delete_selected", [user, other], post="yes")
    assert not get_user_model().objects.filter(pk__in=[user.pk, other.pk]).exists()
    assert AuditLog.objects.filter(tenant=membership.tenant, action="user.deleted", actor=staff).count() == 2
