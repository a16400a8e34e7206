"""Billing's reads: a tenant's invoices, where another tenant's look exactly like missing ones; its beat entries."""
import importlib

import pytest
from django.conf import settings

from billing.invoices import invoice_issue
from billing.models import BillingEvent
from billing.selectors import invoice_get, invoices_for
from billing.services import invoice_line_add
from tenants.exceptions import NotFound
from tests.billing.outbox_support import tenant_billed_by, utc


def draft_for(tenant):
    event = BillingEvent.objects.create(tenant=tenant, tenant_slug=tenant.slug, kind="plan_fee",
                                        period_start=utc(2026, 11, 1), quantity=1, amount_cents=1000,
                                        identifier=f"fee:t{tenant.pk}:2026-11")
    return invoice_line_add(event=event).invoice


def test_another_tenants_invoice_is_not_found_like_a_missing_one(db):
    mine, theirs = tenant_billed_by("invoice"), tenant_billed_by("invoice")
    invoice = draft_for(theirs)
    with pytest.raises(NotFound) as other:
        invoice_get(mine, invoice.pk)
    with pytest.raises(NotFound) as missing:
        invoice_get(mine, invoice.pk + 1000)
    assert str(other.value) == str(missing.value)
    assert invoice_get(theirs, invoice.pk) == invoice


def test_tenants_see_issued_invoices_only_unless_asked(db):
    tenant = tenant_billed_by("invoice")
    invoice = draft_for(tenant)
    assert list(invoices_for(tenant)) == []
    assert list(invoices_for(tenant, issued_only=False)) == [invoice]
    invoice_issue(invoice=invoice, now=utc(2026, 12, 5))
    assert list(invoices_for(tenant)) == [invoice]


def test_billings_ticks_are_in_the_beat_schedule_and_name_its_tasks():
    billing = {name: entry for name, entry in settings.CELERY_BEAT_SCHEDULE.items() if name.startswith("billing-")}
    assert {entry["task"] for entry in billing.values()} == {
        "billing.tasks.deliveries_drain", "billing.tasks.usage_report", "billing.tasks.invoices_issue",
        "billing.tasks.payment_grace_expire", "billing.tasks.reconcile"}
    for entry in billing.values():
        module, name = entry["task"].rsplit(".", 1)
        assert getattr(importlib.import_module(module), name).name == entry["task"]
        schedule = entry["schedule"]  # an interval, or the nightly reconciliation's time of day (crontab)
        assert getattr(schedule, "run_every", None) is None or schedule.run_every.total_seconds() > 0
