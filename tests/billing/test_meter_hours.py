"""The overage meter's unit: the Stripe provider sends hours (the meter and price billing_sync_plans makes are per
hour), as differences of rounded running totals, so any split of a month's overage bills what one event would."""
from decimal import Decimal

import pytest
import stripe
from django.db import transaction
from django.utils import timezone

from billing.models import BillingEvent
from billing.outbox import billing_event_record
from billing.providers.stripe import hours, meter_value
from billing.services import deliveries_drain
from tests.billing.conftest import unique
from tests.billing.outbox_support import tenant_billed_by

ONE_HOUR_AND_A_SECOND = 3601


def split_events(tenant, parts):
    """The overage of one month recorded as successive reports make it: each event knows the running total."""
    month = timezone.now().replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    total, events = 0, []
    with transaction.atomic():
        for part in parts:
            total += part
            events.append(billing_event_record(
                tenant=tenant, kind=BillingEvent.Kind.USAGE, period_start=month, quantity=part, amount_cents=0,
                cumulative=total, identifier=f"usage:t{tenant.pk}:workspace_seconds:{month:%Y-%m}:{total}"))
    return events


def test_hours_are_rounded_on_the_running_total_so_the_deltas_telescope():
    parts = [1] * 7 + [59, 1200, 1, 1, 2333]  # 3601 s in twelve reports, most of them below the rounding
    assert sum(parts) == ONE_HOUR_AND_A_SECOND
    total, values = 0, []
    for part in parts:
        total += part
        values.append(meter_value(BillingEvent(quantity=part, cumulative=total)))
    assert sum(values) == hours(ONE_HOUR_AND_A_SECOND) == Decimal("1.000278")
    # Rounding each delta on its own would not add up (7 × round(1/3600) = 7 × 0.000278).
    assert sum(hours(part) for part in parts) != hours(ONE_HOUR_AND_A_SECOND)


@pytest.fixture
def hourly_meter(stripe_api, settings):
    """A Stripe meter like billing_sync_plans's (sum of `value` per customer) under its own name, and the provider
    pointed at the emulator."""
    settings.BILLING_METER_EVENT_NAME = unique("workspace_hours")
    settings.STRIPE_API_BASE = stripe_api.api_base
    settings.STRIPE_SECRET_KEY = stripe_api.api_key
    return stripe_api.billing.Meter.create(
        display_name="Workspace hours", event_name=settings.BILLING_METER_EVENT_NAME,
        default_aggregation={"formula": "sum"},
        customer_mapping={"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings={"event_payload_key": "value"})


def summed_hours(meter, customer):
    now = int(timezone.now().timestamp())
    start, end = (now - 86400) // 60 * 60, (now + 3600) // 60 * 60
    summaries = stripe.billing.Meter.list_event_summaries(meter.id, customer=customer, start_time=start,
                                                          end_time=end)
    return Decimal(str(summaries.data[0].aggregated_value))


def test_twelve_deltas_bill_the_same_hours_at_the_emulator_as_one_event(db, hourly_meter, stripe_api):
    split = tenant_billed_by("stripe", customer=stripe_api.Customer.create(email="split@example.com").id)
    whole = tenant_billed_by("stripe", customer=stripe_api.Customer.create(email="whole@example.com").id)
    split_events(split, [1] * 7 + [59, 1200, 1, 1, 2333])
    split_events(whole, [ONE_HOUR_AND_A_SECOND])

    assert deliveries_drain() == 13

    expected = Decimal("1.000278")
    assert summed_hours(hourly_meter, split.billing_account.stripe_customer_id) == expected
    assert summed_hours(hourly_meter, whole.billing_account.stripe_customer_id) == expected
    # What a per-hour price makes of it: e.g. 50 cents an hour, rounded half up by Stripe, is 50 cents both ways.
    assert (expected * 50).quantize(Decimal(1)) == 50

