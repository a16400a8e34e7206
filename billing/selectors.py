"""Reads of billing: a tenant's invoices and billing events, and the deliveries staff look after."""
from billing.models import BillingEvent, Delivery, Invoice
from tenants.exceptions import NotFound


def invoices_for(tenant, *, issued_only=True):
    invoices = Invoice.objects.filter(tenant=tenant)
    return invoices.filter(status=Invoice.Status.ISSUED) if issued_only else invoices


def invoice_get(tenant, invoice_id):
    """One of the tenant's invoices; another tenant's looks exactly like one that does not exist."""
    invoice = Invoice.objects.filter(tenant=tenant, pk=invoice_id).first()
    if invoice is None:
        raise NotFound("There is no such invoice.", code="unknown_invoice")
    return invoice


def billing_events_for(tenant, *, period_start=None):
    events = BillingEvent.objects.filter(tenant=tenant)
    return events.filter(period_start=period_start) if period_start is not None else events


def deliveries_dead():
    return Delivery.objects.filter(state=Delivery.State.DEAD).select_related("event")
