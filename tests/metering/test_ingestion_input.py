"""The ingestion API and input it cannot take: values PostgreSQL cannot store, and the platform's own event ids.

Each such event is rejected alone with a reason (never a 500), and the batch's other events are recorded.
"""
import json
from datetime import timedelta

import pytest
from django.utils import timezone

from metering.models import UsageEvent, UsageRollup
from metering.services import workspace_seconds_record
from tests.factories import MembershipFactory
from tests.metering.conftest import tenant_on

pytestmark = pytest.mark.django_db
URL = "/api/v1/usage/events"


def event(i, tenant, **overrides):
    return {"id": f"in-{i}", "tenant": tenant.slug, "meter": "ai_builder_tokens", "quantity": 10,
            "timestamp": timezone.now().isoformat(), "subject": {"user": 1}, **overrides}


def post_raw(client, body):
    return client.generic("POST", URL, body, content_type="application/json")


@pytest.mark.parametrize("bad", [
    pytest.param({"id": "in-nul\u0000"}, id="nul-in-id"),
    pytest.param({"subject": {"note": "a\u0000b"}}, id="nul-in-subject"),
    pytest.param({"subject": {"note": "\ud800"}}, id="lone-surrogate-in-subject"),
    pytest.param({"id": "in-\ud800"}, id="lone-surrogate-in-id"),
    pytest.param({"tenant": "acme\u0000"}, id="nul-in-tenant"),
    pytest.param({"tenant": "acme\udc00"}, id="lone-surrogate-in-tenant"),
    pytest.param({"meter": "tokens\ud800"}, id="lone-surrogate-in-meter"),
])
def test_one_event_postgres_cannot_store_rejects_only_itself(raw_service_client, bad):
    """Valid JSON that PostgreSQL cannot store as text or jsonb (a NUL, a lone surrogate)."""
    tenant = tenant_on("pro")
    batch = [event(1, tenant), {**event(2, tenant), **bad}]
    response = post_raw(raw_service_client, json.dumps({"events": batch}))
    assert response.status_code == 200, (response.status_code, response.content[:300])
    body = response.json()
    assert body["accepted"] == 1 and len(body["rejected"]) == 1, body
    assert UsageEvent.objects.filter(tenant=tenant).count() == 1


def test_nan_in_subject_rejects_only_itself(raw_service_client):
    """Python's json accepts NaN; jsonb does not."""
    tenant = tenant_on("pro")
    good, bad = json.dumps(event(1, tenant)), json.dumps(event(2, tenant, subject={"ratio": float("nan")}))
    response = post_raw(raw_service_client, f'{{"events": [{good}, {bad}]}}')
    assert response.status_code == 200, (response.status_code, response.content[:300])
    assert response.json()["accepted"] == 1


def test_api_cannot_take_an_internal_event_id(raw_service_client):
    """Event ids are global: an API event holding an id of the platform's scheme (`ws:<session>:<start>`) would make
    the session's own event a duplicate and its seconds would never count. The API refuses those prefixes."""
    tenant = tenant_on("pro")
    member = MembershipFactory(tenant=tenant, role="owner")
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=10)
    session_id = "7b0e3c8e-0000-4000-8000-000000000001"
    squat = event(1, tenant, id=f"ws:{session_id}:{int(start.timestamp())}", quantity=0)
    response = post_raw(raw_service_client, json.dumps([squat]))
    assert response.status_code == 200
    assert [item["code"] for item in response.json()["rejected"]] == ["reserved_id"]
    workspace_seconds_record(tenant=tenant, session_id=session_id, user_id=member.user_id, workspace_id=1,
                             start=start, end=start + timedelta(minutes=5))
    rollup = UsageRollup.objects.filter(tenant=tenant, period="month", meter__slug="workspace_seconds").first()
    assert rollup is not None and rollup.quantity == 300
