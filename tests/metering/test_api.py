"""The usage API: ingestion by service token only, per-event rejections, idempotency; GET /usage per tenant."""
import json
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone
from rest_framework.test import APIClient

from metering import services
from metering.models import ServiceToken, UsageEvent, UsageRollup
from metering.tokens import service_token_revoke
from tests.factories import MembershipFactory
from tests.metering.conftest import tenant_on

pytestmark = pytest.mark.django_db
URL = "/api/v1/usage/events"


def event(i, tenant, **overrides):
    return {"id": f"evt-{i}", "tenant": tenant.slug, "meter": "ai_builder_tokens", "quantity": 10,
            "timestamp": timezone.now().isoformat(), "subject": {"user": 1, "workspace": 2}, **overrides}


def test_batch_is_recorded_and_resending_counts_duplicates(service_client):
    tenant = tenant_on("pro")
    batch = [event(i, tenant) for i in range(10)]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 200, response.content
    assert response.json() == {"accepted": 10, "duplicates": 0, "rejected": []}
    # The client did not see the answer and resends, plus two new ones, as a bare list.
    response = service_client.post(URL, batch + [event(10, tenant), event(11, tenant)], format="json")
    assert response.json() == {"accepted": 2, "duplicates": 10, "rejected": []}
    assert UsageEvent.objects.filter(tenant=tenant, source="api").count() == 12
    assert UsageRollup.objects.get(tenant=tenant, period="month", meter__slug="ai_builder_tokens").quantity == 120


def test_each_bad_event_is_rejected_alone_with_a_reason(service_client):
    tenant = tenant_on("pro")
    now = timezone.now()
    batch = [
        event(1, tenant),
        event(2, tenant, meter="no_such_meter"),
        event(3, tenant, quantity=-5),
        {**event(4, tenant), "tenant": "no-such-tenant"},
        event(5, tenant, timestamp=(now - timedelta(days=70)).isoformat()),
        event(6, tenant, timestamp=(now + timedelta(minutes=10)).isoformat()),
        event(7, tenant, timestamp="yesterday"),
        event(8, tenant, quantity=1.5),
        event(9, tenant, subject=[1, 2]),
        {**event(10, tenant), "id": ""},
        event(11, tenant, timestamp=(now + timedelta(minutes=2)).isoformat()),  # within the allowed skew
        event(12, tenant, timestamp=int(now.timestamp())),  # Unix seconds
    ]
    response = service_client.post(URL, {"events": batch}, format="json")
    assert response.status_code == 200
    body = response.json()
    assert body["accepted"] == 3 and body["duplicates"] == 0
    codes = {item["id"]: item["code"] for item in body["rejected"]}
    assert codes == {
        "evt-2": "unknown_meter", "evt-3": "negative_quantity", "evt-4": "unknown_tenant",
        "evt-5": "timestamp_too_old", "evt-6": "timestamp_in_future", "evt-7": "invalid_timestamp",
        "evt-8": "invalid_quantity", "evt-9": "invalid_subject", "": "invalid_id",
    }
    assert all(item["reason"] for item in body["rejected"])
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"evt-1", "evt-11", "evt-12"}


def test_malformed_body_and_oversize_batch_are_refused_whole(service_client, settings):
    tenant = tenant_on("pro")
    response = service_client.post(URL, data=b"{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "malformed"
    response = service_client.post(URL, {"events": "nope"}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "malformed"
    settings.METERING_MAX_BATCH = 5
    response = service_client.post(URL, [event(i, tenant) for i in range(6)], format="json")
    assert response.status_code == 400 and response.json()["code"] == "batch_too_large"
    assert not UsageEvent.objects.exists()


def test_tenant_token_is_refused_with_403(make_api_client):
    membership = MembershipFactory(tenant=tenant_on("pro"), role="owner")
    client = make_api_client(membership)
    response = client.post(URL, [event(1, membership.tenant)], format="json")
    assert response.status_code == 403
    assert "service token" in response.json()["detail"]
    assert not UsageEvent.objects.exists()


def test_no_token_401_and_revoked_token_401(service_token):
    tenant = tenant_on("pro")
    assert APIClient().post(URL, [event(1, tenant)], format="json").status_code == 401
    service_token_revoke(token=ServiceToken.objects.get())
    from metering import tokens

    tokens._token_cache.clear()
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_token}")
    assert client.post(URL, [event(1, tenant)], format="json").status_code == 401


def test_create_service_token_command_prints_a_working_token(capsys):
    call_command("create_service_token", "--name", "ai-builder-gateway", "--meters", "ai_builder_tokens", "--json")
    token = json.loads(capsys.readouterr().out)["token"]
    assert token.startswith("hsv_")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert client.post(URL, [event(1, tenant_on("pro"))], format="json").json()["accepted"] == 1


def test_usage_of_own_tenant_only(make_api_client, service_client):
    mine, theirs = tenant_on("free"), tenant_on("team")
    services.usage_record(tenant=theirs, meter="workspace_seconds", quantity=600)
    services.usage_record(tenant=mine, meter="workspace_seconds", quantity=60)
    member = MembershipFactory(tenant=mine, role="member")
    client = make_api_client(member)
    response = client.get("/api/v1/usage")
    assert response.status_code == 200
    body = response.json()
    assert body["tenant"] == mine.slug
    assert set(body["period"]) == {"start", "end"}
    assert body["meters"]["workspace_seconds"]["used"] == 60
    assert body["day"]["meters"]["workspace_seconds"] == {"used": 60, "included": 1800, "remaining": 1740,
                                                          "unit": "seconds"}
    # Every other verb: not allowed, for members and for another tenant's owner alike.
    other_owner = make_api_client(MembershipFactory(tenant=theirs, role="owner"))
    assert other_owner.get("/api/v1/usage").json()["meters"]["workspace_seconds"]["used"] == 600
    for method in ("post", "put", "patch", "delete"):
        assert getattr(client, method)("/api/v1/usage", {}, format="json").status_code in (403, 405)
        assert getattr(other_owner, method)("/api/v1/usage", {}, format="json").status_code == 405
    assert APIClient().get("/api/v1/usage").status_code == 401


def test_service_token_cannot_read_a_tenants_usage(service_client):
    assert service_client.get("/api/v1/usage").status_code in (401, 403)


def test_service_declares_a_custom_meter_then_sends_events(service_client, make_api_client):
    body = {"slug": "web_builder_deploys", "name": "Deploys", "unit": "deploys"}
    response = service_client.post("/api/v1/usage/meters", body, format="json")
    assert response.status_code == 201 and response.json()["declared_by"] == "api"
    assert service_client.post("/api/v1/usage/meters", body, format="json").status_code == 201  # idempotent
    conflict = service_client.post("/api/v1/usage/meters", {**body, "aggregation": "max"}, format="json")
    assert conflict.status_code == 400
    tenant = tenant_on("pro")
    sent = service_client.post(URL, [event(1, tenant, meter="web_builder_deploys", quantity=2)], format="json")
    assert sent.json()["accepted"] == 1
    member_client = make_api_client(MembershipFactory(tenant=tenant, role="owner"))
    assert member_client.post("/api/v1/usage/meters", {**body, "slug": "x"}, format="json").status_code == 403


def test_api_events_cannot_pose_as_corrections(service_client):
    tenant = tenant_on("pro")
    response = service_client.post(URL, [event(1, tenant, reason="free money", actor_id=1, source="correction")],
                                   format="json")
    assert response.json()["accepted"] == 1
    stored = UsageEvent.objects.get()
    assert (stored.source, stored.reason, stored.actor_id) == ("api", "", None)


def test_odd_json_shapes_are_rejected_per_event(service_client):
    tenant = tenant_on("pro")
    batch = [1, None, {**event(1, tenant), "tenant": ["x"]}, {**event(2, tenant), "meter": {"a": 1}},
             event(3, tenant, quantity=float("1e30")), event(4, tenant, quantity=True), event(5, tenant)]
    body = service_client.post(URL, batch, format="json").json()
    assert body["accepted"] == 1
    assert [r["code"] for r in body["rejected"]] == ["invalid", "invalid", "unknown_tenant", "unknown_meter",
                                                    "invalid_quantity", "invalid_quantity"]


# --- scoped service tokens ---------------------------------------------------------------------------------------


def scoped_client(**scope):
    from metering.tokens import service_token_create

    _, plaintext = service_token_create(name="scoped", **scope)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


@pytest.mark.parametrize("meter", ["workspace_seconds", "egress_bytes", "seats", "storage_bytes"])
def test_no_service_token_writes_a_platform_meter(meter):
    tenant = tenant_on("pro")
    client = scoped_client(meters=["ai_builder_tokens"])
    body = client.post(URL, [event(1, tenant, meter=meter), event(2, tenant)], format="json").json()
    assert body["accepted"] == 1
    assert body["rejected"] == [{"id": "evt-1", "code": "meter_not_allowed",
                                 "reason": f"This service token may not record meter '{meter}'."}]
    assert not UsageEvent.objects.filter(meter__slug=meter).exists()
    # Not even a token row that lists it (made before the rule, or edited in the database) writes it.
    ServiceToken.objects.update(meters=["ai_builder_tokens", meter])
    from metering import tokens

    tokens._token_cache.clear()
    body = client.post(URL, [event(3, tenant, meter=meter)], format="json").json()
    assert [r["code"] for r in body["rejected"]] == ["meter_not_allowed"]
    assert not UsageEvent.objects.filter(meter__slug=meter).exists()


def test_a_platform_meter_cannot_be_put_in_a_scope():
    from metering.tokens import service_token_create
    from tenants.exceptions import ServiceError

    with pytest.raises(ServiceError, match="platform's own meters") as exc:
        service_token_create(name="greedy", meters=["ai_builder_tokens", "storage_bytes"])
    assert exc.value.code == "platform_meter"
    assert not ServiceToken.objects.exists()


def test_an_event_outside_the_tokens_meters_or_tenants_is_rejected_alone():
    mine, other = tenant_on("pro"), tenant_on("pro")
    services.meter_declare(slug="web_builder_deploys", name="Deploys", unit="deploys", declared_by="template")
    client = scoped_client(meters=["ai_builder_tokens"], tenants=[mine.slug])
    batch = [event(1, mine), event(2, other), event(3, mine, meter="web_builder_deploys"),
             {**event(4, mine), "tenant": "no-such-tenant"}, event(5, mine)]
    body = client.post(URL, batch, format="json").json()
    assert body["accepted"] == 2
    assert [(r["id"], r["code"]) for r in body["rejected"]] == [
        ("evt-2", "tenant_not_allowed"), ("evt-3", "meter_not_allowed"),
        ("evt-4", "tenant_not_allowed")]  # a tenant outside the scope is not told apart from one that does not exist
    assert set(UsageEvent.objects.values_list("event_id", flat=True)) == {"evt-1", "evt-5"}
    assert not UsageEvent.objects.filter(tenant=other).exists()


def test_a_token_without_meters_writes_nothing():
    tenant = tenant_on("pro")
    body = scoped_client().post(URL, [event(1, tenant)], format="json").json()
    assert body["accepted"] == 0 and body["rejected"][0]["code"] == "meter_not_allowed"


def test_a_token_declares_only_meters_of_its_scope():
    client = scoped_client(meters=["ai_builder_tokens", "web_builder_deploys"])
    ok = {"slug": "web_builder_deploys", "name": "Deploys", "unit": "deploys"}
    assert client.post("/api/v1/usage/meters", ok, format="json").status_code == 201
    refused = client.post("/api/v1/usage/meters", {**ok, "slug": "gpu_seconds"}, format="json")
    assert refused.status_code == 403 and refused.json()["code"] == "meter_not_allowed"


def test_create_service_token_command_scopes_the_token(capsys):
    one, two, other = tenant_on("pro"), tenant_on("pro"), tenant_on("pro")
    call_command("create_service_token", "--name", "gw", "--meters", "ai_builder_tokens",
                 "--tenants", f"{one.slug},{two.slug}", "--json")
    printed = json.loads(capsys.readouterr().out)
    assert printed["meters"] == ["ai_builder_tokens"] and printed["tenants"] == [one.slug, two.slug]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {printed['token']}")
    body = client.post(URL, [event(1, one), event(2, two), event(3, other)], format="json").json()
    assert body["accepted"] == 2 and [r["code"] for r in body["rejected"]] == ["tenant_not_allowed"]
    from django.core.management.base import CommandError

    with pytest.raises(CommandError, match="platform's own meters"):
        call_command("create_service_token", "--name", "bad", "--meters", "seats")
