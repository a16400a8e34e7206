"""Quantities near bigint's limit: no batch fails because a roll-up would overflow, and only the events that would
take a roll-up past 2**63 - 1 are rejected (code quantity_overflow); the batch's other tenants are recorded."""
import json

import pytest
from django.utils import timezone

from metering.batches import MAX_QUANTITY
from metering.models import UsageEvent, UsageRollup
from tests.metering.conftest import tenant_on

pytestmark = pytest.mark.django_db
URL = "/api/v1/usage/events"


def event(i, tenant, **overrides):
    return {"id": f"big-{i}", "tenant": tenant.slug, "meter": "ai_builder_tokens", "quantity": 10,
            "timestamp": timezone.now().isoformat(), "subject": {"user": 1}, **overrides}


def post(client, events):
    return client.generic("POST", URL, json.dumps(events), content_type="application/json")


def test_two_largest_quantities_neither_overflow_the_rollup_nor_lose_other_tenants(raw_service_client):
    """Each quantity passes the per-event cap (2**62), but two of them would overflow the roll-up's bigint."""
    tenant, other = tenant_on("pro"), tenant_on("pro")
    first = post(raw_service_client, [event(1, tenant, quantity=MAX_QUANTITY)])
    assert first.status_code == 200 and first.json()["accepted"] == 1
    second = post(raw_service_client, [event(2, tenant, quantity=MAX_QUANTITY), event(3, other, quantity=5)])
    assert second.status_code == 200, second.content[:300]
    assert [(item["id"], item["code"]) for item in second.json()["rejected"]] == [("big-2", "quantity_overflow")]
    assert UsageEvent.objects.filter(tenant=other).count() == 1
    rollup = UsageRollup.objects.get(tenant=tenant, period="month", meter__slug="ai_builder_tokens")
    assert rollup.quantity == sum(UsageEvent.objects.filter(tenant=tenant).values_list("quantity", flat=True))


def test_a_meter_at_the_bigint_limit_rejects_only_the_events_past_it(raw_service_client):
    """Once a roll-up holds 2**63 - 1, every later event of that meter would overflow it: those are rejected, and
    the batch's other events are recorded, for the rest of the month."""
    tenant, other = tenant_on("pro"), tenant_on("pro")
    full = post(raw_service_client, [event(1, tenant, quantity=MAX_QUANTITY),
                                     event(2, tenant, quantity=MAX_QUANTITY - 1)])
    assert full.status_code == 200 and full.json()["accepted"] == 2
    later = post(raw_service_client, [event(3, tenant, quantity=1), event(4, other, quantity=5)])
    assert later.status_code == 200, later.content[:300]
    body = later.json()
    assert body["accepted"] == 1
    assert [(item["id"], item["code"]) for item in body["rejected"]] == [("big-3", "quantity_overflow")]
    assert UsageEvent.objects.filter(tenant=other).count() == 1
