"""usage_report: the delta of billable usage since the last report becomes billing events, once."""
import threading

import pytest
import time_machine
from django.db import connection
from django.db.models import Sum

from billing.models import BillingEvent, Delivery, ReportedUsage
from billing.reporting import overage_amount_cents
from billing.services import usage_report, usage_report_tenant
from metering.meters import meter_cache
from tests.billing.outbox_support import HOUR, tenant_billed_by, utc, workspace_time
from tests.conftest import seed_data_ensure

NOW = utc(2026, 11, 20, 12)


def test_usage_within_the_allowance_bills_nothing(db):
    tenant = tenant_billed_by("stripe")  # Pro: 20 h a month, overage 50 c/h
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 19 * HOUR, at=NOW)
        assert usage_report_tenant(tenant=tenant) == []
    assert not BillingEvent.objects.filter(tenant=tenant).exists()


def test_overage_is_reported_as_deltas_that_add_up_to_the_month(db):
    tenant = tenant_billed_by("stripe")
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 20 * HOUR + 1800, at=NOW)
        [first] = usage_report_tenant(tenant=tenant)
        assert (first.kind, first.quantity, first.amount_cents) == ("usage", 1800, 25)
        assert first.identifier == f"usage:t{tenant.pk}:workspace_seconds:2026-11:1800"
        workspace_time(tenant, 77, at=NOW, event_id="more")
        [second] = usage_report_tenant(tenant=tenant)
        assert second.quantity == 77
        workspace_time(tenant, 3600 - 77, at=NOW, event_id="rest")
        usage_report_tenant(tenant=tenant)
    events = BillingEvent.objects.filter(tenant=tenant, kind="usage")
    assert events.aggregate(q=Sum("quantity"))["q"] == 1800 + 3600
    # Rounded down per cumulative total, never per delta: the deltas add up to the month's exact amount.
    assert events.aggregate(a=Sum("amount_cents"))["a"] == overage_amount_cents(5400, 50) == 75
    mark = ReportedUsage.objects.get(tenant=tenant, period_start=utc(2026, 11, 1))
    assert (mark.quantity, mark.amount_cents) == (5400, 75)
    assert set(Delivery.objects.filter(event__tenant=tenant).values_list("provider", flat=True)) == {"stripe"}


def test_rerunning_the_report_creates_nothing_new(db):
    tenant = tenant_billed_by("stripe", "invoice")
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 21 * HOUR, at=NOW)
        created = usage_report()
        assert created == 2  # the overage, and the plan fee for the invoice provider
        before = (BillingEvent.objects.count(), Delivery.objects.count())
        assert usage_report() == 0
        assert usage_report_tenant(tenant=tenant) == []
    assert (BillingEvent.objects.count(), Delivery.objects.count()) == before


def test_a_watermark_lost_with_its_events_is_recomputed_to_the_same_identifier(db):
    """Events and watermark commit together; should a watermark go missing, the next report's event is the same
    fact under the same identifier, refused as a duplicate rather than charged twice."""
    tenant = tenant_billed_by("stripe")
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 21 * HOUR, at=NOW)
        [event] = usage_report_tenant(tenant=tenant)
        ReportedUsage.objects.filter(tenant=tenant).delete()
        assert usage_report_tenant(tenant=tenant) == []
    assert list(BillingEvent.objects.filter(tenant=tenant)) == [event]
    assert ReportedUsage.objects.get(tenant=tenant, period_start=utc(2026, 11, 1)).quantity == HOUR


def test_fee_goes_to_the_invoice_provider_only_and_once_a_month(db):
    stripe_only = tenant_billed_by("stripe")
    both = tenant_billed_by("stripe", "invoice")
    with time_machine.travel(NOW, tick=False):
        usage_report()
        usage_report()
    assert not BillingEvent.objects.filter(tenant=stripe_only).exists()  # the subscription bills Stripe's fee
    fee = BillingEvent.objects.get(tenant=both, kind="plan_fee")
    assert (fee.amount_cents, fee.identifier) == (1000, f"fee:t{both.pk}:2026-11")
    assert list(fee.deliveries.values_list("provider", flat=True)) == ["invoice"]


def test_contract_fee_replaces_the_plan_price_and_synthetic_tenants_are_not_billed(db):
    enterprise = tenant_billed_by("invoice", plan="enterprise")
    enterprise.billing_account.fixed_fee_cents = 150_000
    enterprise.billing_account.save()
    demo = tenant_billed_by("invoice", synthetic=True)
    with time_machine.travel(NOW, tick=False):
        usage_report()
    assert BillingEvent.objects.get(tenant=enterprise).amount_cents == 150_000
    assert not BillingEvent.objects.filter(tenant=demo).exists()


def test_the_previous_month_is_reported_until_final(db):
    tenant = tenant_billed_by("stripe")
    with time_machine.travel(utc(2026, 10, 31, 23), tick=False):
        workspace_time(tenant, 20 * HOUR + 600, at=utc(2026, 10, 31, 22))
    with time_machine.travel(utc(2026, 11, 1, 1), tick=False):
        workspace_time(tenant, 60, at=utc(2026, 10, 31, 23, 59), event_id="late")  # within the grace
        [event] = usage_report_tenant(tenant=tenant)
    assert (event.period_start, event.quantity) == (utc(2026, 10, 1), 660)


@pytest.mark.django_db(transaction=True)
def test_concurrent_reports_of_one_tenant_create_each_event_once():
    seed_data_ensure()  # plans and meters: an earlier transactional test's flush may have taken them
    meter_cache.reload()
    tenant = tenant_billed_by("stripe", "invoice")
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 25 * HOUR, at=NOW)
    barrier, results, errors = threading.Barrier(4), [], []

    def report():
        try:
            barrier.wait()
            results.append(len(usage_report_tenant(tenant=tenant)))
        except Exception as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=report) for _ in range(4)]
    with time_machine.travel(NOW, tick=False):  # the clock is process-wide: moved once, for every thread
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == [] and sum(results) == 2
    assert sorted(BillingEvent.objects.values_list("kind", "quantity")) == [("plan_fee", 1), ("usage", 5 * HOUR)]
    assert Delivery.objects.count() == 3  # fee → invoice; usage → stripe and invoice
