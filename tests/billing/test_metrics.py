"""Billing's figures on /metrics move with the real drain: a delivery to the Stripe-shaped provider over HTTP, a
dead letter, and the outbox's backlog and dead letters read from the database at scrape time."""
from django.db import transaction

from billing.models import BillingEvent
from billing.outbox import billing_event_record
from billing.services import deliveries_drain
from tests.billing import outbox_support
from tests.billing.outbox_support import tenant_billed_by, utc
from tests.metrics_support import scrape

provider = outbox_support.provider


def _event(tenant, identifier):
    with transaction.atomic():
        return billing_event_record(tenant=tenant, kind=BillingEvent.Kind.USAGE, period_start=utc(2026, 11, 1),
                                    quantity=60, amount_cents=1, identifier=identifier)


def test_a_delivery_and_a_dead_letter_move_the_counters_and_the_backlog(db, provider, redis_url):
    billed = tenant_billed_by("stripe", customer="cus_42")
    no_customer = tenant_billed_by("stripe", customer="")  # Stripe cannot bill it: a permanent error
    before = scrape()
    _event(billed, f"metrics:{billed.pk}:1")
    _event(no_customer, f"metrics:{no_customer.pk}:1")

    waiting = scrape()
    assert waiting.value("hearth_billing_outbox_backlog", provider="stripe") == \
        before.value("hearth_billing_outbox_backlog", provider="stripe") + 2
    assert waiting.value("hearth_billing_outbox_oldest_age_seconds", provider="stripe") >= 0.0

    assert deliveries_drain() == 1
    after = scrape()
    assert after.value("hearth_billing_deliveries_total", provider="stripe", outcome="delivered") == \
        before.value("hearth_billing_deliveries_total", provider="stripe", outcome="delivered") + 1
    assert after.value("hearth_billing_deliveries_total", provider="stripe", outcome="dead") == \
        before.value("hearth_billing_deliveries_total", provider="stripe", outcome="dead") + 1
    assert after.value("hearth_billing_dead_letters", provider="stripe") == \
        before.value("hearth_billing_dead_letters", provider="stripe") + 1
    assert after.value("hearth_billing_outbox_backlog", provider="stripe") == \
        before.value("hearth_billing_outbox_backlog", provider="stripe")


def test_a_provider_outage_is_counted_as_retries(db, provider, redis_url):
    tenant = tenant_billed_by("stripe", customer="cus_42")
    _event(tenant, f"metrics:{tenant.pk}:outage")
    provider.status = 503
    before = scrape().value("hearth_billing_deliveries_total", provider="stripe", outcome="retry")
    assert deliveries_drain() == 0
    assert scrape().value("hearth_billing_deliveries_total", provider="stripe", outcome="retry") == before + 1


def test_the_events_outbox_backlog(db, redis_url, django_capture_on_commit_callbacks):
    from tenants.events import event_emit
    from tests.factories import TenantFactory

    before = scrape().value("hearth_outbox_backlog")
    with django_capture_on_commit_callbacks(execute=False), transaction.atomic():
        event_emit(type="metrics.test", tenant=TenantFactory())
    result = scrape()
    assert result.value("hearth_outbox_backlog") == before + 1
    assert result.value("hearth_outbox_oldest_age_seconds") >= 0.0
