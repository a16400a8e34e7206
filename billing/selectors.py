"""Reads of billing: a tenant's invoices (Hearth's and Stripe's) and billing events, and the deliveries staff look
after."""
from django.conf import settings
from djstripe import models as djstripe_models

from billing.models import BillingEvent, Delivery, Invoice
from tenants.exceptions import NotFound


def invoices_for(tenant, *, issued_only=True):
    invoices = Invoice.objects.filter(tenant=tenant)
    return invoices.filter(status=Invoice.Status.ISSUED) if issued_only else invoices


def stripe_invoices_for(tenant):
    """The Stripe invoices of the tenant's customer, as dj-stripe synced them (webhooks), newest first; drafts
    are Stripe's work in progress and not shown."""
    return (djstripe_models.Invoice.objects
            .filter(customer__subscriber=tenant, livemode=settings.STRIPE_LIVE_MODE)
            .exclude(stripe_data__status="draft").order_by("-created", "-djstripe_id"))


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
