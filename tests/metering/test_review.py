"""Review of metering (exactly-once, quotas, bad input): each test here failed before its fix, or still fails."""
import json
from datetime import timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from metering.models import UsageEvent, UsageRollup
from metering.services import MAX_QUANTITY
from tests.factories import MembershipFactory
from tests.metering.conftest import tenant_on

pytestmark = pytest.mark.django_db
URL = "/api/v1/usage/events"


@pytest.fixture
def client(service_token):
    client = APIClient(raise_request_exception=False)  # a 500 must show as a 500, not as the test's error
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_token}")
    return client


def event(i, tenant, **overrides):
    return {"id": f"rev-{i}", "tenant": tenant.slug, "meter": "ai_builder_tokens", "quantity": 10,
            "timestamp": timezone.now().isoformat(), "subject": {"user": 1}, **overrides}


def post_raw(client, body):
    return client.generic("POST", URL, body, content_type="application/json")


@pytest.mark.parametrize("bad", [
    pytest.param({"id": "rev-nul\u0000"}, id="nul-in-id"),
    pytest.param({"subject": {"note": "a\u0000b"}}, id="nul-in-subject"),
    pytest.param({"subject": {"note": "\ud800"}}, id="lone-surrogate-in-subject"),
    pytest.param({"id": "rev-\ud800"}, id="lone-surrogate-in-id"),
    pytest.param({"tenant": "acme\u0000"}, id="nul-in-tenant"),
    pytest.param({"tenant": "acme\udc00"}, id="lone-surrogate-in-tenant"),
    pytest.param({"meter": "tokens\ud800"}, id="lone-surrogate-in-meter"),
])
def test_one_event_postgres_cannot_store_rejects_only_itself(client, bad):
    """docs/metering.md: "A bad event rejects only itself". Valid JSON that PostgreSQL cannot store as text/jsonb
    (NUL, a lone surrogate) must be rejected with a reason, and the batch's good events recorded."""
    tenant = tenant_on("pro")
    batch = [event(1, tenant), {**event(2, tenant), **bad}]
    response = post_raw(client, json.dumps({"events": batch}))
    assert response.status_code == 200, (response.status_code, response.content[:300])
    body = response.json()
    assert body["accepted"] == 1 and len(body["rejected"]) == 1, body
    assert UsageEvent.objects.filter(tenant=tenant).count() == 1


def test_nan_in_subject_rejects_only_itself(client):
    """Python's json accepts NaN; jsonb does not."""
    tenant = tenant_on("pro")
    good, bad = json.dumps(event(1, tenant)), json.dumps(event(2, tenant, subject={"ratio": float("nan")}))
    body = f'{{"events": [{good}, {bad}]}}'
    response = post_raw(client, body)
    assert response.status_code == 200, (response.status_code, response.content[:300])
    assert response.json()["accepted"] == 1


def test_large_quantities_cannot_overflow_the_rollup_and_poison_the_meter(client):
    """Each quantity passes the per-event cap (2**62), but two of them overflow the roll-up's bigint: the batch
    fails with a 500, and once a roll-up is near the limit every later batch touching that tenant's meter fails
    too (other tenants' events in the same batch are lost with it)."""
    tenant, other = tenant_on("pro"), tenant_on("pro")
    first = post_raw(client, json.dumps([event(1, tenant, quantity=MAX_QUANTITY)]))
    assert first.status_code == 200 and first.json()["accepted"] == 1
    second = post_raw(client, json.dumps([event(2, tenant, quantity=MAX_QUANTITY), event(3, other, quantity=5)]))
    assert second.status_code < 500, second.content[:300]
    # Whatever the answer for the huge event, the other tenant's ordinary event is recorded.
    assert UsageEvent.objects.filter(tenant=other).count() == 1
    rollup = UsageRollup.objects.get(tenant=tenant, period="month", meter__slug="ai_builder_tokens")
    assert rollup.quantity == sum(UsageEvent.objects.filter(tenant=tenant).values_list("quantity", flat=True))


def test_api_cannot_take_an_internal_event_id(client):
    """Event ids are global. A service (bug or not) sending an id of the internal scheme (`ws:<session>:<start>`,
    `storage:<tenant>:<hour>`, `seats:…`, `correction:…`) makes the platform's own later event a "duplicate":
    that session's seconds are never counted. The ingestion API must refuse the internal prefixes."""
    from metering.services import workspace_seconds_record

    tenant = tenant_on("pro")
    member = MembershipFactory(tenant=tenant, role="owner")
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=10)
    session_id = "7b0e3c8e-0000-4000-8000-000000000001"
    squat = event(1, tenant, id=f"ws:{session_id}:{int(start.timestamp())}", quantity=0)
    response = post_raw(client, json.dumps([squat]))
    assert response.status_code == 200
    workspace_seconds_record(tenant=tenant, session_id=session_id, user_id=member.user_id, workspace_id=1,
                             start=start, end=start + timedelta(minutes=5))
    rollup = UsageRollup.objects.filter(tenant=tenant, period="month", meter__slug="workspace_seconds").first()
    assert rollup is not None and rollup.quantity == 300


def _live_session(tenant, user, started_at):
    from workspaces import services as workspace_services
    from workspaces.models import Container, Node, Session, WorkspaceTemplate

    template = WorkspaceTemplate.objects.filter(enabled=True).first()
    node = Node.objects.create(name=f"rev-{tenant.slug}", engine_url="unix:///nonexistent.sock", enabled=False)
    workspace = workspace_services.workspace_create(tenant=tenant, owner=user, name="w", template=template)
    container = Container.objects.create(node=node, template=template, state=Container.State.CLAIMED)
    return Session.objects.create(tenant=tenant, workspace=workspace, user=user, container=container,
                                  started_at=started_at, last_activity_at=started_at, metered_until=started_at)


def test_gateway_egress_bytes_are_metered(monkeypatch):
    """Issue 5 and docs/metering.md: `egress_bytes` is "a counter fed from the gateway's per-session counters".
    The reclaim tick reads those counters (`_activity_from_gateway`) but uses only idle_seconds: no code records
    egress_bytes, so every byte sent is lost to billing. HAProxy's stick table is replaced by its reader's
    answer here (the gateway's own tests cover reading it)."""
    from workspaces import services as workspace_services

    tenant = tenant_on("pro")
    member = MembershipFactory(tenant=tenant, role="owner")
    now = timezone.now()
    session = _live_session(tenant, member.user, now - timedelta(minutes=2))
    from workspaces.gateway import routes as gateway_routes

    monkeypatch.setattr(gateway_routes, "counters_read", lambda **kw: {
        str(session.pk): {"requests": 40, "bytes_in": 20_000, "bytes_out": 5_000_000, "active": True,
                          "idle_seconds": 0}})
    workspace_services.sessions_reclaim(now=now)
    egress = UsageRollup.objects.filter(tenant=tenant, period="month", meter__slug="egress_bytes").first()
    assert egress is not None and egress.quantity >= 5_000_000


def _staff_with(client, *codenames):
    from django.contrib.auth.models import Permission

    from tests.factories import UserFactory

    staff = UserFactory(is_staff=True, is_superuser=False)
    staff.user_permissions.set(Permission.objects.filter(content_type__app_label="metering", codename__in=codenames))
    client.force_login(staff)
    return staff


def test_view_only_staff_cannot_record_a_credit(client):
    """A correction changes what a tenant pays. The admin's correction view checks only `view_usageevent`, so a
    read-only staff member (support, looking at events) can credit any tenant any amount."""
    from metering.services import meter_get

    tenant = tenant_on("pro")
    _staff_with(client, "view_usageevent", "view_usagerollup")
    assert client.get("/admin/metering/usageevent/").status_code == 200  # they may read events
    client.post("/admin/metering/usageevent/correct/", {
        "tenant": tenant.pk, "meter": meter_get("workspace_seconds").pk, "quantity": -36000, "reason": "because"})
    assert not UsageEvent.objects.filter(source="correction").exists()


def test_staff_without_metering_permissions_cannot_see_every_tenants_usage(client):
    """The limits view lists every tenant's usage against its plan; it checks only is_staff (admin_view)."""
    from metering.services import usage_record

    tenant = tenant_on("free")
    usage_record(tenant=tenant, meter="workspace_seconds", quantity=29 * 60)
    _staff_with(client)  # staff, but no permission on metering at all
    response = client.get("/admin/metering/usagerollup/limits/")
    assert response.status_code in (302, 403) or tenant.slug.encode() not in response.content


def test_a_meter_at_the_bigint_limit_does_not_fail_every_later_batch(client):
    """Once a tenant's roll-up holds 2**63 - 1, any later event for that meter overflows it: without a guard every
    batch containing one fails whole (500), other tenants' events with it, until the month ends."""
    tenant, other = tenant_on("pro"), tenant_on("pro")
    full = post_raw(client, json.dumps([event(1, tenant, quantity=MAX_QUANTITY),
                                        event(2, tenant, quantity=MAX_QUANTITY - 1)]))
    assert full.status_code == 200 and full.json()["accepted"] == 2
    later = post_raw(client, json.dumps([event(3, tenant, quantity=1), event(4, other, quantity=5)]))
    assert later.status_code == 200, later.content[:300]
    assert later.json()["accepted"] == 1 and [r["id"] for r in later.json()["rejected"]] == ["rev-3"]
    assert UsageEvent.objects.filter(tenant=other).count() == 1
