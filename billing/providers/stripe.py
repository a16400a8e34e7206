"""The Stripe provider: usage beyond the allowance as billing meter events in hours, through the stripe SDK over HTTP.

The plan's fixed fee is not sent: the Stripe subscription bills it. The meter is the one `billing_sync_plans`
creates (`BILLING_METER_EVENT_NAME`), summed per customer and priced per hour, so each event's value is its share
of the month's billable hours (see `meter_value`).
"""
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

import stripe
from django.conf import settings

from billing.models import BillingEvent
from billing.providers import BillingProvider, PermanentError, TransientError
from metering import periods
from metering.meters import WORKSPACE_SECONDS

SECONDS_PER_HOUR = 3600
# Millionths of an hour (3.6 ms): Stripe keeps 15 significant digits, enough for a billion hours at this precision.
HOUR_QUANTUM = Decimal("0.000001")
# Stripe answers a meter event whose identifier it already holds (24 h at least) with these codes: it has the event.
DUPLICATE_CODES = ("duplicate_meter_event", "resource_already_exists")

_clients = threading.local()  # one client (and HTTP session) per thread and configuration


def _client():
    config = (settings.STRIPE_SECRET_KEY, settings.STRIPE_API_BASE, settings.STRIPE_TIMEOUT)
    api_key, api_base, timeout = config
    cached = getattr(_clients, "cached", None)
    if cached is None or cached[0] != config:
        # No SDK retries: the delivery loop retries with its own back-off and keeps count of the attempts.
        client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=0,
                                     http_client=stripe.RequestsClient(timeout=timeout))
        _clients.cached = cached = (config, client)
    return cached[1]


def hours(seconds):
    """A month's running total in hours, to the millionth (half up)."""
    return (Decimal(seconds) / SECONDS_PER_HOUR).quantize(HOUR_QUANTUM, rounding=ROUND_HALF_UP)


def meter_value(event):
    """The event's hours as the difference of the rounded running totals before and after it, so however the month
    was split into reports its values add up to exactly `hours(month's total)`: the amount one event would bill.
    An event recorded without a running total counts on its own."""
    after = event.cumulative if event.cumulative is not None else event.quantity
    return hours(after) - hours(after - event.quantity)


def _usage_time(event):
    """When Stripe should count the usage: inside its billing month, also when reported after the month ended."""
    _, period_end = periods.month_bounds(event.period_start)
    return min(event.created_at, period_end - timedelta(seconds=1))


class StripeProvider(BillingProvider):
    name = "stripe"

    def accepts(self, event):
        return event.kind == BillingEvent.Kind.USAGE

    def deliver(self, event, *, idempotency_key):
        account = getattr(event.tenant, "billing_account", None) if event.tenant else None
        customer = account.stripe_customer_id if account else ""
        if not customer:
            raise PermanentError(f"tenant {event.tenant_slug} has no Stripe customer id")
        params = {
            "event_name": settings.BILLING_METER_EVENT_NAME,
            "payload": {"stripe_customer_id": customer, "value": f"{meter_value(event):f}"},
            "identifier": event.identifier,
            "timestamp": int(_usage_time(event).timestamp()),
        }
        try:
            meter_event = _client().v1.billing.meter_events.create(
                params=params, options={"idempotency_key": idempotency_key})
        except stripe.APIConnectionError as exc:
            raise TransientError(f"Stripe unreachable: {exc}") from exc
        except stripe.StripeError as exc:
            if isinstance(exc, stripe.InvalidRequestError) and exc.code in DUPLICATE_CODES:
                return event.identifier
            message = f"Stripe answered {exc.http_status}: {exc.user_message or exc}"
            if exc.http_status is None or exc.http_status >= 500 or exc.http_status in (409, 429):
                raise TransientError(message) from exc
            raise PermanentError(message) from exc
        return meter_event.get("identifier") or event.identifier

    def billed_usage(self, *, period_start, tenants):
        """What Stripe's meter holds for each tenant's customer in the month (its invoice charges the meter's sum at
        the plan's hourly price), in seconds and cents (Stripe rounds the line half up). The month, not Stripe's
        invoices: a subscription's cycle need not start on the 1st, and the provider dates each event inside its
        month. One request per customer, BILLING_DRAIN_CONCURRENCY at a time."""
        start, end = periods.month_bounds(period_start)
        customers = [(tenant, tenant.billing_account.stripe_customer_id) for tenant in tenants
                     if getattr(tenant, "billing_account", None) and tenant.billing_account.stripe_customer_id]
        if not customers:
            return {}
        meter_id = _meter_id()

        def read(item):
            tenant, customer = item
            summaries = _call(lambda: _client().v1.billing.meters.event_summaries.list(
                meter_id, params={"customer": customer, "start_time": int(start.timestamp()),
                                  "end_time": int(end.timestamp())}))
            value = sum((Decimal(str(s.aggregated_value)) for s in summaries.data), Decimal(0))
            price = tenant.plan.overage_price_cents_per_hour or 0
            return (tenant.pk, WORKSPACE_SECONDS), (_whole(value * SECONDS_PER_HOUR), _whole(value * price))

        width = max(1, min(settings.BILLING_DRAIN_CONCURRENCY, len(customers)))
        with ThreadPoolExecutor(max_workers=width, thread_name_prefix="billing-reconcile") as pool:
            return dict(pool.map(read, customers))


def _whole(value):
    return int(value.quantize(Decimal(1), rounding=ROUND_HALF_UP))


def _meter_id():
    """The id of the active meter `billing_sync_plans` made for BILLING_METER_EVENT_NAME."""
    meters = _call(lambda: _client().v1.billing.meters.list(params={"status": "active", "limit": 100}))
    for meter in meters.auto_paging_iter():
        if meter.event_name == settings.BILLING_METER_EVENT_NAME:
            return meter.id
    raise PermanentError(f"Stripe has no active meter {settings.BILLING_METER_EVENT_NAME!r} (billing_sync_plans)")


def _call(request):
    try:
        return request()
    except stripe.APIConnectionError as exc:
        raise TransientError(f"Stripe unreachable: {exc}") from exc
    except stripe.StripeError as exc:
        raise PermanentError(f"Stripe answered {exc.http_status}: {exc.user_message or exc}") from exc
