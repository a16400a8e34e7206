"""Reads of billing: a tenant's invoices (Hearth's and Stripe's) and billing events, and the deliveries staff look
after."""
from datetime import UTC, datetime

from django.conf import settings
from djstripe import models as djstripe_models

from billing.models import BillingEvent, Delivery, Invoice
from metering import periods
from tenants.exceptions import NotFound


def monthly_fee_cents(*, plan_price_cents, contract_cents):
    """What a tenant pays a month for its plan: its contract fee (`BillingAccount.fixed_fee_cents`) when it has one,
    else the plan's price. The one rule: billing's fee events and the MRR in insights both use it."""
    return plan_price_cents if contract_cents is None else contract_cents


def invoices_for(tenant, *, issued_only=True):
    invoices = Invoice.objects.filter(tenant=tenant)
    return invoices.filter(status=Invoice.Status.ISSUED) if issued_only else invoices


def stripe_invoices_for(tenant):
    """The Stripe invoices of the tenant's customer, as dj-stripe synced them (webhooks), newest first; drafts
    are Stripe's work in progress and not shown."""
    return (djstripe_models.Invoice.objects
            .filter(customer__subscriber=tenant, livemode=settings.STRIPE_LIVE_MODE)
            .exclude(stripe_data__status="draft").order_by("-created", "-djstripe_id"))


def invoice_listing(tenant):
    """The tenant's invoices from both providers, newest first, in one shape: Stripe's (PDF and page at Stripe) and
    Hearth's issued ones (`hearth_id`: the caller links its PDF). Not paged: about one a month from each provider."""
    rows = []
    for invoice in stripe_invoices_for(tenant):
        data = invoice.stripe_data
        rows.append({"provider": "stripe", "id": invoice.id, "hearth_id": None, "number": data.get("number") or "",
                     "status": data.get("status") or "", "period_start": _moment(data.get("period_start")),
                     "period_end": _moment(data.get("period_end")), "amount_cents": data.get("total") or 0,
                     "currency": data.get("currency") or "", "created": invoice.created,
                     "pdf_url": data.get("invoice_pdf"), "page_url": data.get("hosted_invoice_url")})
    for invoice in invoices_for(tenant):
        _, period_end = periods.month_bounds(invoice.period_start)
        rows.append({"provider": "invoice", "id": str(invoice.pk), "hearth_id": invoice.pk, "number": invoice.number,
                     "status": invoice.status, "period_start": invoice.period_start, "period_end": period_end,
                     "amount_cents": invoice.total_cents, "currency": invoice.currency, "created": invoice.issued_at,
                     "pdf_url": None, "page_url": None})
    rows.sort(key=lambda row: row["created"], reverse=True)
    return rows


def _moment(timestamp):
    return datetime.fromtimestamp(timestamp, UTC) if timestamp else None


def invoice_get(tenant, invoice_id, *, issued_only=False):
    """One of the tenant's invoices; another tenant's looks exactly like one that does not exist (and, with
    `issued_only`, so does a draft)."""
    invoice = invoices_for(tenant, issued_only=issued_only).filter(pk=invoice_id).first()
    if invoice is None:
        raise NotFound("There is no such invoice.", code="unknown_invoice")
    return invoice


def billing_events_for(tenant, *, period_start=None):
    events = BillingEvent.objects.filter(tenant=tenant)
    return events.filter(period_start=period_start) if period_start is not None else events


def deliveries_dead():
    return Delivery.objects.filter(state=Delivery.State.DEAD).select_related("event")
