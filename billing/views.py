"""The tenant's Billing page: plan, subscription status and period, the next invoice and past invoices with their
PDFs (owners), Stripe's portal."""
import logging

import stripe
from django.contrib import messages
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_POST

from billing import selectors, subscriptions
from billing.invoices import invoice_render_pdf
from tenants import policy
from tenants.exceptions import ServiceError
from tenants.portal import tenant_view

log = logging.getLogger(__name__)


@tenant_view
@require_GET
def billing_page(request, membership):
    tenant = membership.tenant
    if request.GET.get("checkout"):
        # Back from Stripe Checkout: the webhook may still be on its way, so read the subscription now.
        try:
            tenant = subscriptions.subscription_sync(tenant=tenant)
        except stripe.StripeError:
            log.warning("could not read %s's subscription on the return from checkout", tenant.slug, exc_info=True)
        messages.success(request, f"Thank you: {tenant.name} is on the {tenant.plan.name} plan."
                         if tenant.subscription_status in subscriptions.PAID
                         else "The payment is being confirmed; this page shows the plan once Stripe reports it.")
    tenant = type(tenant).objects.select_related("plan", "pending_plan").get(pk=tenant.pk)
    owner = policy.can_see_billing(membership)
    billing = subscriptions.billing_overview(tenant=tenant, show_amounts=owner)
    invoices = selectors.invoice_listing(tenant) if owner else []
    for row in invoices:
        if row["hearth_id"] is not None:
            row["pdf_url"] = reverse("billing:invoice-pdf", args=[row["hearth_id"]])
    context = {"billing": billing, "is_owner": owner, "tenant": tenant, "invoices": invoices,
               "status_label": billing["status"].replace("_", " ")}
    return render(request, "billing/billing.html", context)


@tenant_view
@require_GET
def invoice_pdf(request, membership, pk):
    """One of Hearth's issued invoices as PDF, for owners; another tenant's or a draft is 404 like a missing one."""
    if not policy.can_see_billing(membership):
        raise Http404
    invoice = selectors.invoice_get(membership.tenant, pk, issued_only=True)
    response = HttpResponse(invoice_render_pdf(invoice), content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{invoice.number}.pdf"'
    return response


@tenant_view
@require_POST
def customer_portal(request, membership):
    """Cards and invoices are managed in Stripe's customer portal; an owner is sent there and comes back here."""
    try:
        url = subscriptions.portal_session_create(tenant=membership.tenant, actor=request.user,
                                                  return_url=request.build_absolute_uri(reverse("billing:page")))
    except ServiceError as exc:
        messages.error(request, exc.message)
        return redirect("billing:page")
    return redirect(url)


def dashboard_card(request, membership):
    """The dashboard's billing card (registered in BillingConfig.ready): what the tenant row knows, no Stripe call."""
    tenant = membership.tenant
    statuses = {"": "none (no paid subscription)", "past_due": "past due", "incomplete_expired": "expired"}
    return {"plan": tenant.plan.name, "pending_plan": tenant.pending_plan.name if tenant.pending_plan_id else None,
            "status": statuses.get(tenant.subscription_status, tenant.subscription_status),
            "period_end": tenant.current_period_end}


def plans(request):
    """The address mails and quota messages give for upgrades (METERING_UPGRADE_URL): the plans page."""
    return redirect("portal:plans")
