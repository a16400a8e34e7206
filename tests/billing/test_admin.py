"""Billing's admin pages open for staff: every list and every record's page, with real rows in them."""
import time_machine
from django.urls import reverse

from billing.models import BillingAccount, BillingEvent, Delivery, Invoice, InvoiceCounter, ReportedUsage
from billing.services import deliveries_drain, invoices_issue, usage_report
from tests.billing.outbox_support import HOUR, tenant_billed_by, utc, workspace_time
from tests.factories import UserFactory


def test_every_billing_admin_page_opens(db, client):
    tenant = tenant_billed_by("invoice")
    with time_machine.travel(utc(2026, 11, 20), tick=False):
        workspace_time(tenant, 21 * HOUR, at=utc(2026, 11, 20))
        usage_report()
        deliveries_drain()
    with time_machine.travel(utc(2026, 12, 5), tick=False):
        invoices_issue()
    client.force_login(UserFactory(is_staff=True, is_superuser=True))
    for model in (BillingAccount, BillingEvent, Delivery, Invoice, InvoiceCounter, ReportedUsage):
        name = f"admin:billing_{model._meta.model_name}"
        assert client.get(reverse(f"{name}_changelist")).status_code == 200, model
        record = model.objects.first()
        assert record is not None, model
        assert client.get(reverse(f"{name}_change", args=[record.pk])).status_code == 200, model
    invoice = Invoice.objects.get()
    page = client.get(reverse("admin:billing_invoice_changelist")).content.decode()
    assert invoice.number in page and reverse("admin:billing_invoice_pdf", args=[invoice.pk]) in page
