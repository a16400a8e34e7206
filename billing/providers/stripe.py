"""The Stripe provider: usage beyond the allowance as billing meter events, through the stripe SDK over HTTP.

The plan's fixed fee is not sent: the Stripe subscription bills it. Settings (read with defaults):
`STRIPE_API_BASE` (else the SDK's `stripe.api_base`, https://api.stripe.com; the offline emulator's URL in development
and tests),
`STRIPE_SECRET_KEY` (else `STRIPE_TEST_SECRET_KEY`), `BILLING_STRIPE_METER_EVENT_NAME` and
`BILLING_PROVIDER_TIMEOUT` (seconds).
"""
import threading
from datetime import timedelta

import stripe
from django.conf import settings

from billing.models import BillingEvent
from billing.providers import BillingProvider, PermanentError, TransientError
from metering import periods

DEFAULT_API_BASE = "https://api.stripe.com"
DEFAULT_METER_EVENT_NAME = "workspace_overage_seconds"
# Stripe answers a meter event whose identifier it already holds (24 h at least) with these codes: it has the event.
DUPLICATE_CODES = ("duplicate_meter_event", "resource_already_exists")

_clients = threading.local()  # one client (and HTTP session) per thread and configuration


def _client():
    api_key = getattr(settings, "STRIPE_SECRET_KEY", "") or getattr(settings, "STRIPE_TEST_SECRET_KEY", "")
    # Without the setting, the SDK's global (what the emulator's fixtures and `make run` point elsewhere).
    api_base = getattr(settings, "STRIPE_API_BASE", "") or stripe.api_base or DEFAULT_API_BASE
    timeout = getattr(settings, "BILLING_PROVIDER_TIMEOUT", 10)
    config = (api_key, api_base, timeout)
    cached = getattr(_clients, "cached", None)
    if cached is None or cached[0] != config:
        # No SDK retries: the delivery loop retries with its own back-off and keeps count of the attempts.
        client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=0,
                                     http_client=stripe.RequestsClient(timeout=timeout))
        _clients.cached = cached = (config, client)
    return cached[1]


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
            "event_name": getattr(settings, "BILLING_STRIPE_METER_EVENT_NAME", DEFAULT_METER_EVENT_NAME),
            "payload": {"stripe_customer_id": customer, "value": str(event.quantity)},
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
