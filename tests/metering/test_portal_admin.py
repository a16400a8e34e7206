"""The portal's usage page, the banner tag, and the admin's correction form, limits view and token creation, with
who may see and use each."""
from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.template import Context, Template
from django.urls import reverse
from django.utils import timezone

from metering import meters, services
from metering.models import ServiceToken, UsageEvent
from tenants.models import AuditLog
from tenants.portal import SESSION_KEY
from tests.factories import MembershipFactory, UserFactory
from tests.metering.conftest import tenant_on

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def midday():
    """Mid-day, mid-month: "a few minutes ago" is always today and this month."""
    import time_machine

    with time_machine.travel(datetime(2026, 3, 10, 12, 0, tzinfo=UTC), tick=True):
        yield


def use_seconds(tenant, seconds, *, at, session="s"):
    with transaction.atomic():
        services.workspace_seconds_record(tenant=tenant, session_id=session, user_id=1, workspace_id=1, start=at,
                                          end=at + timedelta(seconds=seconds))


def test_usage_page_shows_own_tenant_with_a_chart_per_meter(client, free_tenant):
    member = free_tenant.memberships.get().user
    other = tenant_on("team")
    now = timezone.now()
    use_seconds(free_tenant, 25 * 60, at=now - timedelta(minutes=26))
    use_seconds(other, 9999, at=now - timedelta(hours=3))
    client.force_login(member)
    response = client.get("/usage/")
    assert response.status_code == 200
    html = response.content.decode()
    assert html.count("<svg") == 5  # one chart per meter
    assert "Today: <strong>25 min</strong> of 30 min a day" in html
    assert "usage-banner-warning" in html  # 25 of 30 minutes today
    assert "2 h 46 min" not in html  # the other tenant's 9,999 s
    assert '<a href="/usage/" aria-current="page">Usage</a>' in html  # in the portal's layout, its nav
    assert html.count("usage-banner-warning") == 1


def test_usage_page_needs_login(client):
    assert client.get("/usage/").status_code == 302


def test_usage_page_sends_a_user_of_no_tenant_to_create_one(client, free_tenant):
    use_seconds(free_tenant, 25 * 60, at=timezone.now() - timedelta(minutes=26))
    client.force_login(UserFactory())
    response = client.get("/usage/")
    assert response.status_code == 302 and response["Location"] == reverse("portal:tenant_create")


def test_usage_page_cannot_be_pointed_at_another_tenant(client):
    """The tenant comes from the user's own memberships: another tenant's slug, chosen or forged, is never shown."""
    mine, theirs = tenant_on("free"), tenant_on("free")
    me = MembershipFactory(tenant=mine).user
    use_seconds(theirs, 25 * 60, at=timezone.now() - timedelta(minutes=26))
    client.force_login(me)
    assert client.post(reverse("portal:tenant_switch"), {"tenant": theirs.slug}).status_code == 404
    session = client.session
    session[SESSION_KEY] = theirs.slug  # as if the switch had let it through
    session.save()
    html = client.get("/usage/").content.decode()
    assert f"Usage of {mine.name}" in html and theirs.name not in html and "25 min" not in html


def test_banner_tag_renders_for_a_tenant_over_its_allowance(free_tenant):
    use_seconds(free_tenant, 1800, at=timezone.now() - timedelta(minutes=31))
    html = Template("{% load metering %}{% usage_banner tenant %}").render(Context({"tenant": free_tenant}))
    assert "usage-banner-danger" in html and "Upgrade" in html


@pytest.fixture
def staff_client(client):
    staff = UserFactory(is_staff=True, is_superuser=True)
    client.force_login(staff)
    client.staff = staff
    return client


def test_admin_correction_form_records_a_credit_with_audit(staff_client):
    tenant = tenant_on("pro")
    use_seconds(tenant, 600, at=timezone.now() - timedelta(minutes=11))
    page = staff_client.get("/admin/metering/usageevent/correct/")
    assert page.status_code == 200
    meter_id = meters.meter_get("workspace_seconds").pk
    response = staff_client.post("/admin/metering/usageevent/correct/", {
        "tenant": tenant.pk, "meter": meter_id, "quantity": -60, "reason": "Outage on the 3rd"})
    assert response.status_code == 302
    correction = UsageEvent.objects.get(source="correction")
    assert correction.quantity == -60 and correction.actor == staff_client.staff
    assert AuditLog.objects.filter(action="usage.corrected", tenant=tenant).exists()
    # No reason: refused by the form, nothing recorded.
    staff_client.post("/admin/metering/usageevent/correct/", {"tenant": tenant.pk, "meter": meter_id,
                                                              "quantity": 5, "reason": ""})
    assert UsageEvent.objects.filter(source="correction").count() == 1


def test_admin_limits_view_lists_tenants_near_limits_and_unusual_usage(staff_client):
    near = tenant_on("free")
    use_seconds(near, 1700, at=timezone.now() - timedelta(minutes=29))
    response = staff_client.get("/admin/metering/usagerollup/limits/")
    assert response.status_code == 200
    html = response.content.decode()
    assert near.slug in html and "94%" in html
    assert "unusual-usage" in html  # a first busy day counts as unusual against a mean of 0


def test_admin_event_and_rollup_lists_are_read_only(staff_client):
    tenant = tenant_on("pro")
    use_seconds(tenant, 60, at=timezone.now() - timedelta(minutes=2))
    events_page = staff_client.get("/admin/metering/usageevent/")
    assert events_page.status_code == 200 and b"/admin/metering/usageevent/correct/" in events_page.content
    rollups_page = staff_client.get("/admin/metering/usagerollup/")
    assert rollups_page.status_code == 200 and b"/admin/metering/usagerollup/limits/" in rollups_page.content
    event = UsageEvent.objects.get()
    assert staff_client.post(f"/admin/metering/usageevent/{event.pk}/delete/", {"post": "yes"}).status_code == 403
    assert UsageEvent.objects.count() == 1


def test_admin_creates_service_token_and_shows_it_once(staff_client):
    response = staff_client.post("/admin/metering/servicetoken/add/",
                                 {"name": "ai-gateway", "meters": "ai_builder_tokens", "tenant_slugs": ""},
                                 follow=True)
    assert response.status_code == 200
    token = ServiceToken.objects.get(name="ai-gateway")
    shown = [str(m) for m in response.context["messages"]]
    assert any("hsv_" in m and token.prefix in m for m in shown)
    assert AuditLog.objects.filter(action="service_token.created").exists()


def test_offboarding_keeps_usage_events_and_exports_totals(free_tenant):
    from tenants.services import tenant_offboard

    owner = free_tenant.memberships.get().user
    use_seconds(free_tenant, 120, at=timezone.now() - timedelta(minutes=3))
    export = tenant_offboard(tenant=free_tenant, actor=owner)
    event = UsageEvent.objects.get()
    assert event.tenant_id is None and event.tenant_slug == free_tenant.slug
    import json
    import tarfile

    with tarfile.open(export.path) as tar:
        data = json.load(tar.extractfile(f"{free_tenant.slug}/tenant.json"))
    assert data["usage"][0]["meter"] == "workspace_seconds" and data["usage"][0]["quantity"] == 120


def test_members_of_another_tenant_see_only_theirs(client):
    mine, theirs = tenant_on("free"), tenant_on("free")
    me = MembershipFactory(tenant=mine).user
    use_seconds(theirs, 1800, at=timezone.now() - timedelta(minutes=31))
    client.force_login(me)
    html = client.get("/usage/").content.decode()
    assert "usage-banner" not in html and mine.name in html and theirs.name not in html


def test_non_staff_cannot_reach_the_correction_form_or_limits(client, free_tenant):
    owner = free_tenant.memberships.get().user
    client.force_login(owner)
    for url in ("/admin/metering/usageevent/correct/", "/admin/metering/usagerollup/limits/"):
        assert client.get(url).status_code == 302
    response = client.post("/admin/metering/usageevent/correct/", {"tenant": free_tenant.pk, "quantity": -5,
                                                                   "reason": "x"})
    assert response.status_code == 302 and not UsageEvent.objects.exists()


def test_every_portal_page_warns_and_the_dashboard_shows_usage(client, free_tenant):
    member = free_tenant.memberships.get().user
    use_seconds(free_tenant, 25 * 60, at=timezone.now() - timedelta(minutes=26))
    client.force_login(member)
    for path in ("/", "/usage/", "/members/"):
        html = client.get(path).content.decode()
        assert html.count("usage-banner-warning") == 1, path
    dashboard = client.get("/").content.decode()
    assert "83% used" in dashboard  # 25 of 30 minutes today


def _staff_with(client, *codenames):
    from django.contrib.auth.models import Permission

    staff = UserFactory(is_staff=True, is_superuser=False)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="metering", codename__in=codenames))
    client.force_login(staff)
    return staff


def test_view_only_staff_cannot_record_a_credit(client):
    """A correction changes what a tenant pays: reading events (support) does not allow recording one."""
    tenant = tenant_on("pro")
    _staff_with(client, "view_usageevent", "view_usagerollup")
    assert client.get("/admin/metering/usageevent/").status_code == 200  # they may read events
    client.post("/admin/metering/usageevent/correct/", {
        "tenant": tenant.pk, "meter": meters.meter_get("workspace_seconds").pk, "quantity": -36000,
        "reason": "because"})
    assert not UsageEvent.objects.filter(source="correction").exists()


def test_staff_without_metering_permissions_cannot_see_every_tenants_usage(client):
    """The limits view lists every tenant's usage against its plan: being staff is not enough to see it."""
    tenant = tenant_on("free")
    services.usage_record(tenant=tenant, meter="workspace_seconds", quantity=29 * 60)
    _staff_with(client)  # staff, but no permission on metering at all
    response = client.get("/admin/metering/usagerollup/limits/")
    assert response.status_code in (302, 403) or tenant.slug.encode() not in response.content


def test_admin_shows_and_edits_a_service_tokens_scope_through_the_service(staff_client):
    from metering.tokens import service_token_create

    tenant = tenant_on("pro")
    token, _ = service_token_create(name="gw", meters=["ai_builder_tokens"])
    listing = staff_client.get("/admin/metering/servicetoken/")
    assert b"ai_builder_tokens" in listing.content and b"every tenant" in listing.content
    url = f"/admin/metering/servicetoken/{token.pk}/change/"
    refused = staff_client.post(url, {"name": "gw", "meters": "ai_builder_tokens,egress_bytes", "tenant_slugs": ""})
    assert refused.status_code == 200 and b"platform" in refused.content  # the form shows why
    assert ServiceToken.objects.get(pk=token.pk).meters == ["ai_builder_tokens"]
    saved = staff_client.post(url, {"name": "gw", "meters": "ai_builder_tokens,gpu_seconds",
                                    "tenant_slugs": tenant.slug})
    assert saved.status_code == 302, saved.content[:500]
    token.refresh_from_db()
    assert token.meters == ["ai_builder_tokens", "gpu_seconds"] and token.tenant_slugs == [tenant.slug]
    assert AuditLog.objects.get(action="service_token.scoped").data["after"]["tenants"] == [tenant.slug]
