"""The Stripe customer Hearth makes for a tenant is recorded on its BillingAccount, where the Stripe provider looks."""
import stripe

from billing.catalogue import stripe_options
from billing.models import BillingAccount
from billing.subscriptions import customer_get_or_create
from tenants.models import AuditLog, Plan
from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.factories import TenantFactory


def test_a_new_customer_gets_an_account_billed_by_stripe(hearth_stripe, db):
    tenant = TenantFactory(plan=Plan.objects.get(slug="free"))
    customer = customer_get_or_create(tenant=tenant)
    assert customer_get_or_create(tenant=tenant).id == customer.id

    account = BillingAccount.objects.get(tenant=tenant)
    assert (account.providers, account.stripe_customer_id) == (["stripe"], customer.id)
    assert AuditLog.objects.filter(tenant=tenant, action="billing.account_linked").count() == 1
    assert stripe.Customer.retrieve(customer.id, **stripe_options()).metadata["hearth_tenant"] == tenant.slug


def test_an_account_staff_set_up_keeps_its_providers(hearth_stripe, db):
    tenant = TenantFactory(plan=Plan.objects.get(slug="enterprise"))
    BillingAccount.objects.create(tenant=tenant, providers=["invoice"], fixed_fee_cents=90000)
    customer = customer_get_or_create(tenant=tenant)

    account = BillingAccount.objects.get(tenant=tenant)
    assert (account.providers, account.stripe_customer_id, account.fixed_fee_cents) == (
        ["invoice"], customer.id, 90000)
    linked = AuditLog.objects.get(tenant=tenant, action="billing.account_linked")
    assert linked.data["before"] == {"providers": ["invoice"], "stripe_customer_id": ""}
