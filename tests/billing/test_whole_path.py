"""The whole billing path, both halves joined: Free → Pro through Checkout and its webhook → usage past the allowance
→ the billing queue → Stripe meter events in hours → the period's Stripe invoice with the overage line → the
tenant's invoices in the API. Real PostgreSQL, the offline Stripe over real HTTP."""
from decimal import ROUND_HALF_UP, Decimal

import stripe
from django.db import transaction
from django.test import Client
from django.utils import timezone

from billing.catalogue import stripe_options
from billing.models import BillingAccount, BillingEvent, Delivery
from billing.services import deliveries_drain, usage_report_tenant
from billing.stripe_emulator.paying_customer import subscription_advance
from metering.services import usage_record
from tenants.models import AuditLog
from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.billing.fixtures_subscriptions import pay
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

HOUR = 3600
OVERAGE = [2 * HOUR, 1800, 1]  # 2 h 30 min 1 s beyond the allowance, in three reports


def workspace_seconds(tenant, seconds, n):
    with transaction.atomic():
        usage_record(tenant=tenant, meter="workspace_seconds", quantity=seconds, timestamp=timezone.now(),
                     event_id=f"whole-path:{tenant.pk}:{n}")


def hours_meter():
    return next(meter for meter in stripe.billing.Meter.list(limit=100, **stripe_options()).auto_paging_iter()
                if meter.event_name == "workspace_hours")


def test_free_to_pro_to_an_invoice_with_the_overage(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant

    # Choose Pro: a Checkout Session, the tenant stays on Free until Stripe reports the subscription paid.
    response = client.post("/api/v1/tenant/plan", {"plan": "pro"}, format="json")
    assert response.status_code == 202, response.content
    assert response.json()["plan"] == "free"
    completed = pay(stripe_emulator, response.json()["checkout_url"])
    hooks.deliver("checkout.session.completed", object_id=completed["id"])
    tenant.refresh_from_db()
    assert (tenant.plan.slug, tenant.subscription_status) == ("pro", "active")

    # The customer made for Checkout is the Stripe provider's way to the tenant.
    account = BillingAccount.objects.get(tenant=tenant)
    assert (account.providers, account.stripe_customer_id) == (["stripe"], completed["customer"])
    assert AuditLog.objects.filter(tenant=tenant, action="billing.account_linked",
                                   target=completed["customer"]).count() == 1

    # Usage past Pro's 20 h, reported in three steps (each a delta of the month's overage).
    allowance = tenant.plan.monthly_hours * HOUR
    assert allowance == 20 * HOUR
    workspace_seconds(tenant, allowance, 0)
    assert usage_report_tenant(tenant=tenant) == []  # exactly the allowance: nothing billable
    for n, seconds in enumerate(OVERAGE, start=1):
        workspace_seconds(tenant, seconds, n)
        assert len(usage_report_tenant(tenant=tenant)) == 1
    events = list(BillingEvent.objects.filter(tenant=tenant, kind="usage").order_by("pk"))
    assert [event.quantity for event in events] == OVERAGE
    assert events[-1].cumulative == sum(OVERAGE) == 9001

    assert deliveries_drain() == 3
    assert set(Delivery.objects.filter(event__tenant=tenant).values_list("provider", "state")) == {
        ("stripe", "delivered")}

    # Stripe's meter sums the hours exactly: 9001 s = 2.500278 h.
    now = int(timezone.now().timestamp())
    summaries = stripe.billing.Meter.list_event_summaries(
        hours_meter().id, customer=account.stripe_customer_id, start_time=(now - 86400) // 60 * 60,
        end_time=(now + 3600) // 60 * 60, **stripe_options())
    assert Decimal(str(summaries.data[0].aggregated_value)) == Decimal("2.500278")

    # The period ends: Stripe invoices the overage in arrears at Pro's price per hour, and the next month.
    subscription_advance(api_base=stripe_emulator, subscription_id=completed["subscription"])
    price = tenant.plan.overage_price_cents_per_hour
    expected = int((Decimal("2.500278") * price).quantize(Decimal(1), rounding=ROUND_HALF_UP))
    assert expected == 9001 * price // 3600  # what Hearth's own roll-ups make of the same seconds
    invoices = stripe.Invoice.list(customer=account.stripe_customer_id, limit=10, **stripe_options()).data
    cycle = next(invoice for invoice in invoices if invoice.billing_reason == "subscription_cycle")
    usage = [line for line in cycle.lines.data if "(usage)" in (line.description or "")]
    assert [line.amount for line in usage] == [expected]
    assert cycle.total == expected + tenant.plan.monthly_price_cents

    # The invoice reaches Hearth by webhook (dj-stripe syncs it) and the owner sees it with its PDF.
    hooks.deliver("invoice.paid", object_id=cycle.id)
    listed = client.get("/api/v1/invoices")
    assert listed.status_code == 200, listed.content
    mine = {row["id"]: row for row in listed.json()}
    assert mine[cycle.id]["provider"] == "stripe"
    assert mine[cycle.id]["amount_cents"] == expected + tenant.plan.monthly_price_cents
    assert mine[cycle.id]["currency"] == "usd"

    browser = Client()
    browser.force_login(owner.user)
    assert (cycle.get("number") or cycle.id) in browser.get("/billing/").content.decode()

    # A member who is not an owner sees no invoices; another tenant's owner sees none of these.
    member = MembershipFactory(tenant=tenant, role="member")
    assert api_client_for(member).get("/api/v1/invoices").status_code == 403
    stranger = MembershipFactory(tenant=TenantFactory(), role="owner")
    assert api_client_for(stranger).get("/api/v1/invoices").json() == []
