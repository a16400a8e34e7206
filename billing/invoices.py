"""Hearth's own invoices: drafts collecting billing events, gapless numbering at issue, HTML and PDF rendering."""
from django.conf import settings
from django.db import connection, transaction
from django.template.loader import render_to_string
from django.utils import timezone

from billing.models import Invoice, InvoiceCounter, InvoiceLine
from metering import periods
from tenants.audit import audit_record


def invoice_line_add(*, event):
    """Put a billing event on its tenant's draft invoice for the event's month; a repeat returns the same line.

    The month's draft is created on demand; once the month's invoice is issued, a late event opens a
    supplementary draft for the same month (an issued invoice never changes).
    """
    with transaction.atomic():
        existing = InvoiceLine.objects.filter(event=event).select_related("invoice").first()
        if existing is not None:
            return existing
        tenant = event.tenant
        invoice, _ = Invoice.objects.select_for_update().get_or_create(
            tenant=tenant, period_start=event.period_start, status=Invoice.Status.DRAFT,
            defaults={"tenant_slug": event.tenant_slug, "tenant_name": tenant.name if tenant else event.tenant_slug,
                      "currency": event.currency},
        )
        line = InvoiceLine.objects.create(
            invoice=invoice, event=event, description=event.description or event.get_kind_display(),
            quantity=event.quantity, unit=event.meter.unit if event.meter_id else "month",
            amount_cents=event.amount_cents,
        )
        invoice.total_cents += event.amount_cents
        invoice.save(update_fields=["total_cents"])
    return line


def invoice_issue(*, invoice, actor=None, now=None):
    """Issue a draft: the next number of the year, taken from the year's counter row locked in this transaction.

    A rollback anywhere in the transaction rolls the counter back too, so a number is never skipped; concurrent
    issues queue on the counter row. Issuing an issued invoice returns it unchanged.
    """
    now = now or timezone.now()
    year = now.year
    with transaction.atomic():
        invoice = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if invoice.status == Invoice.Status.ISSUED:
            return invoice
        with connection.cursor() as cursor:
            cursor.execute("INSERT INTO billing_invoicecounter (year, last_number) VALUES (%s, 0) "
                           "ON CONFLICT (year) DO NOTHING", [year])
        counter = InvoiceCounter.objects.select_for_update().get(year=year)
        counter.last_number += 1
        counter.save(update_fields=["last_number"])
        invoice.status, invoice.year, invoice.sequence, invoice.issued_at = (
            Invoice.Status.ISSUED, year, counter.last_number, now)
        invoice.save(update_fields=["status", "year", "sequence", "issued_at"])
        audit_record(tenant=invoice.tenant, actor=actor, action="billing.invoice_issued", target=invoice.number,
                     data={"period": f"{invoice.period_start:%Y-%m}", "total_cents": invoice.total_cents,
                           "currency": invoice.currency})
    return invoice


def invoices_issue(*, period_start=None, actor=None, now=None):
    """Issue every draft of a closed billing month (default: the months closed by now, i.e. past their late-event
    grace). Each invoice is issued in its own transaction, in primary-key order. Returns the issued invoices."""
    now = now or timezone.now()
    drafts = Invoice.objects.filter(status=Invoice.Status.DRAFT).order_by("pk")
    if period_start is not None:
        drafts = drafts.filter(period_start=period_start)
    else:
        drafts = drafts.filter(period_start__lt=periods.month_bounds(periods.open_since(now))[0])
    return [invoice_issue(invoice=invoice, actor=actor, now=now) for invoice in drafts]


def _context(invoice):
    month_start = invoice.period_start
    _, month_end = periods.month_bounds(month_start)
    return {
        "invoice": invoice,
        "lines": list(invoice.lines.order_by("pk")),
        "period_end": month_end,
        "issuer": settings.BILLING_INVOICE_ISSUER,
        "payment_terms": settings.BILLING_INVOICE_PAYMENT_TERMS,
    }


def money(cents, currency):
    """Integer minor units as text, e.g. 12345, "usd" -> "123.45 USD" (no float on the way)."""
    sign = "-" if cents < 0 else ""
    whole, minor = divmod(abs(int(cents)), 100)
    return f"{sign}{whole:,}.{minor:02d} {currency.upper()}"


def invoice_render_html(invoice):
    return render_to_string("billing/invoice.html", _context(invoice))


def invoice_render_pdf(invoice):
    """The invoice as PDF bytes (fpdf2, core fonts: no files to ship)."""
    from fpdf import FPDF

    context = _context(invoice)
    pdf = FPDF(format="A4")
    pdf.set_title(f"Invoice {invoice.number or 'draft'}")
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 16)
    pdf.cell(0, 10, _latin1(f"{context['issuer']} - Invoice {invoice.number or '(draft)'}"),
             new_x="LMARGIN", new_y="NEXT")
    pdf.set_font("Helvetica", size=10)
    for text in (
        f"Customer: {invoice.tenant_name} ({invoice.tenant_slug})",
        f"Period: {invoice.period_start:%Y-%m-%d} to {context['period_end']:%Y-%m-%d} (UTC)",
        f"Issued: {invoice.issued_at:%Y-%m-%d}" if invoice.issued_at else "Not issued yet",
    ):
        pdf.cell(0, 6, _latin1(text), new_x="LMARGIN", new_y="NEXT")
    pdf.ln(4)
    pdf.set_font("Helvetica", "B", 10)
    widths = (100, 45, 45)
    for width, heading in zip(widths, ("Description", "Quantity", "Amount"), strict=True):
        pdf.cell(width, 7, heading, border="B")
    pdf.ln()
    pdf.set_font("Helvetica", size=10)
    for line in context["lines"]:
        pdf.cell(widths[0], 7, _latin1(line.description[:60]))
        pdf.cell(widths[1], 7, f"{line.quantity} {line.unit}")
        pdf.cell(widths[2], 7, money(line.amount_cents, invoice.currency), align="R")
        pdf.ln()
    pdf.set_font("Helvetica", "B", 10)
    pdf.cell(widths[0] + widths[1], 8, "Total", border="T")
    pdf.cell(widths[2], 8, money(invoice.total_cents, invoice.currency), border="T", align="R")
    pdf.ln(12)
    pdf.set_font("Helvetica", size=9)
    pdf.multi_cell(0, 5, _latin1(context["payment_terms"]))
    return bytes(pdf.output())


def _latin1(text):
    # The PDF core fonts cover Latin-1 only; anything else is replaced rather than failing the invoice.
    return text.encode("latin-1", "replace").decode("latin-1")
