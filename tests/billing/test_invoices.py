"""Hearth's own invoices: lines from delivered billing events, gapless numbers per year, HTML and PDF."""
import re
import threading
import zlib

import pytest
import time_machine
from django.db import connection, transaction
from django.urls import reverse

from billing.invoices import invoice_issue, invoice_line_add, invoice_render_html, invoice_render_pdf
from billing.models import BillingEvent, Invoice, InvoiceCounter, InvoiceLine
from billing.services import deliveries_drain, invoices_issue, usage_report
from tenants.models import AuditLog
from tests.billing.outbox_support import HOUR, tenant_billed_by, utc, workspace_time
from tests.conftest import seed_data_ensure
from tests.factories import UserFactory

NOW = utc(2026, 11, 20, 12)


def month_billed(tenant):
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 22 * HOUR, at=NOW)
        usage_report()
        deliveries_drain()
    return Invoice.objects.get(tenant=tenant)


def test_delivered_events_become_lines_of_the_months_draft_with_the_fee(db):
    tenant = tenant_billed_by("invoice", name="Acme Bank Transfers")
    invoice = month_billed(tenant)
    assert (invoice.status, invoice.number, invoice.period_start) == ("draft", "", utc(2026, 11, 1))
    lines = list(invoice.lines.values_list("quantity", "amount_cents"))
    assert sorted(lines) == [(1, 1000), (2 * HOUR, 100)]  # the Pro fee, and 2 h at 50 c/h
    assert invoice.total_cents == 1100
    delivery = BillingEvent.objects.get(tenant=tenant, kind="usage").deliveries.get()
    assert delivery.state == "delivered" and delivery.reference.startswith(f"invoice:{invoice.pk}:line:")


def test_adding_an_event_twice_keeps_one_line(db):
    tenant = tenant_billed_by("invoice")
    invoice = month_billed(tenant)
    event = BillingEvent.objects.get(tenant=tenant, kind="plan_fee")
    assert invoice_line_add(event=event).pk == InvoiceLine.objects.get(event=event).pk
    invoice.refresh_from_db()
    assert (invoice.lines.count(), invoice.total_cents) == (2, 1100)


def test_issue_numbers_the_invoice_and_a_late_event_opens_a_supplementary_draft(db):
    tenant = tenant_billed_by("invoice")
    invoice = month_billed(tenant)
    with time_machine.travel(utc(2026, 12, 2, 7), tick=False):  # late events still arrive for November
        assert invoices_issue() == []
    with time_machine.travel(utc(2026, 12, 3, 7), tick=False):  # November's grace is over
        [issued] = invoices_issue()
        assert issued.pk == invoice.pk and issued.number.startswith("HRT-2026-")
        assert invoices_issue() == []  # idempotent
        workspace_time(tenant, 600, at=utc(2026, 11, 30, 23), event_id="late-correction")
        usage_report()
        deliveries_drain()
    issued.refresh_from_db()
    assert issued.total_cents == 1100  # an issued invoice never changes
    supplementary = Invoice.objects.get(tenant=tenant, period_start=utc(2026, 11, 1), status="draft")
    assert supplementary.lines.get().quantity == 600
    assert AuditLog.objects.filter(action="billing.invoice_issued", target=issued.number).exists()


def test_a_rolled_back_issue_leaves_no_gap(db):
    tenants = [tenant_billed_by("invoice") for _ in range(3)]
    drafts = [month_billed(tenant) for tenant in tenants]
    with time_machine.travel(utc(2026, 12, 5), tick=False):
        invoice_issue(invoice=drafts[0])
        with pytest.raises(ZeroDivisionError), transaction.atomic():
            invoice_issue(invoice=drafts[1])
            1 / 0  # noqa: B018 — whatever fails after the number is taken
        invoice_issue(invoice=drafts[2])
        invoice_issue(invoice=drafts[1])
    numbers = sorted(Invoice.objects.filter(status="issued").values_list("sequence", flat=True))
    assert numbers == list(range(numbers[0], numbers[0] + 3))


@pytest.mark.django_db(transaction=True)
def test_two_threads_issuing_at_once_get_consecutive_numbers():
    seed_data_ensure()  # plans: an earlier transactional test's flush may have taken them
    drafts = []
    with transaction.atomic():
        for _ in range(20):
            tenant = tenant_billed_by("invoice")
            event = BillingEvent.objects.create(
                tenant=tenant, tenant_slug=tenant.slug, kind="plan_fee", period_start=utc(2026, 11, 1), quantity=1,
                amount_cents=1000, identifier=f"fee:t{tenant.pk}:2026-11")
            drafts.append(invoice_line_add(event=event).invoice)
    barrier, errors = threading.Barrier(2), []

    def issue(share):
        try:
            barrier.wait()
            for invoice in share:
                invoice_issue(invoice=invoice, now=utc(2026, 12, 5))
        except Exception as exc:  # reported to the test thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=issue, args=(drafts[i::2],)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    numbers = sorted(Invoice.objects.values_list("sequence", flat=True))
    assert numbers == list(range(1, 21))
    assert InvoiceCounter.objects.get(year=2026).last_number == 20


def test_html_and_pdf_show_the_number_lines_and_total(db):
    tenant = tenant_billed_by("invoice", name="Zürich Ölwerke")
    invoice = invoice_issue(invoice=month_billed(tenant), now=utc(2026, 12, 5))
    html = invoice_render_html(invoice)
    assert invoice.number in html and "Zürich Ölwerke" in html and "11.00 USD" in html and "10.00 USD" in html
    pdf = invoice_render_pdf(invoice)
    assert pdf.startswith(b"%PDF")
    assert invoice.number.encode() in pdf  # in the document's title
    page_text = b"".join(zlib.decompress(stream.strip(b"\r\n"))
                         for stream in re.findall(rb"stream(.*?)endstream", pdf, re.S))
    assert invoice.number.encode() in page_text and b"11.00 USD" in page_text


def test_staff_open_invoices_in_admin_as_html_and_pdf(db, client):
    from django.contrib.auth.models import Permission

    invoice = invoice_issue(invoice=month_billed(tenant_billed_by("invoice")), now=utc(2026, 12, 5))
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_invoice", content_type__app_label="billing"))
    client.force_login(viewer)
    html = client.get(reverse("admin:billing_invoice_html", args=[invoice.pk]))
    pdf = client.get(reverse("admin:billing_invoice_pdf", args=[invoice.pk]))
    assert invoice.number in html.content.decode()
    assert pdf["Content-Type"] == "application/pdf" and pdf.content.startswith(b"%PDF")
    client.force_login(UserFactory(is_staff=True))
    assert client.get(reverse("admin:billing_invoice_pdf", args=[invoice.pk])).status_code == 403
