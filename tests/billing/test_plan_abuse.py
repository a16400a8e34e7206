"""No paid plan without a paid subscription, by any route: the API, the plans page, a new organisation, the sign-up
form, the checkout return page, another tenant's or a stranger's subscription; only staff set plans directly."""
import pytest
import stripe
from django.test import Client
from django.urls import reverse

from billing.catalogue import checkout_line_items, stripe_options
from billing.subscriptions import customer_get_or_create
from tenants import services
from tenants.exceptions import Forbidden
from tenants.models import AuditLog, Plan, Tenant
from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.billing.fixtures_subscriptions import pay
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def browser_of(user):
    client = Client()
    client.force_login(user)
    return client


def no_plan_change(tenant):
    tenant.refresh_from_db()
    return tenant.plan.slug == "free" and not AuditLog.objects.filter(tenant=tenant,
                                                                      action="tenant.plan_changed").exists()


@pytest.mark.parametrize("plan", ["starter", "pro", "team"])
def test_the_api_answers_a_checkout_and_keeps_the_plan(catalogue, free_tenant, plan, stripe_emulator):
    tenant, owner, client = free_tenant
    response = client.post("/api/v1/tenant/plan", {"plan": plan}, format="json")
    assert response.status_code == 202 and response.json()["plan"] == "free"
    assert response.json()["checkout_url"].startswith(stripe_emulator)
    assert no_plan_change(tenant)


def test_the_api_never_offers_enterprise_and_only_owners_choose(catalogue, free_tenant):
    tenant, owner, client = free_tenant
    from tests.conftest import api_client_for

    response = client.post("/api/v1/tenant/plan", {"plan": "enterprise"}, format="json")
    assert response.status_code == 400 and response.json()["code"] == "plan_not_offered"
    tenant.plan = Plan.objects.get(slug="team")  # room for a second member
    tenant.save()
    member = api_client_for(MembershipFactory(tenant=tenant, role="admin"))
    assert member.post("/api/v1/tenant/plan", {"plan": "pro"}, format="json").status_code == 403


def test_the_plans_page_sends_the_owner_to_checkout(catalogue, free_tenant, stripe_emulator):
    tenant, owner, _ = free_tenant
    response = browser_of(owner.user).post(reverse("portal:plans"), {"plan": "team"})
    assert response.status_code == 302 and response["Location"].startswith(f"{stripe_emulator}/_emulator/checkout/")
    assert no_plan_change(tenant)


def test_a_new_organisation_starts_on_free_and_goes_to_checkout(catalogue, stripe_emulator, db):
    user = UserFactory()
    response = browser_of(user).post(reverse("portal:tenant_create"), {"name": "Initech", "plan": "pro"})
    assert response.status_code == 302 and response["Location"].startswith(stripe_emulator)
    assert no_plan_change(Tenant.objects.get(name="Initech"))


def test_signup_with_a_paid_plan_starts_on_free_and_goes_to_checkout(catalogue, stripe_emulator, smtp_server):
    client = Client()
    # An address of its own: allauth sends one confirmation per address every few minutes (its cache outlives tests).
    response = client.post(reverse("account_signup"), {
        "email": "paid-signup@example.test", "password1": "a long passphrase 42", "password2": "a long passphrase 42",
        "organisation": "Hopper Labs", "plan": "team",
    })
    assert response.status_code == 302
    tenant = Tenant.objects.get(name="Hopper Labs")
    assert no_plan_change(tenant)

    mail = smtp_server.wait_for(to="paid-signup@example.test", subject_contains="Confirm your email address")
    response = client.post(smtp_server.link_in(mail, "/accounts/confirm-email/"))

    assert response.status_code == 302 and response["Location"].startswith(f"{stripe_emulator}/_emulator/checkout/")
    assert no_plan_change(tenant)


def test_staff_alone_set_a_plan_directly(free_tenant):
    tenant, owner, _ = free_tenant
    with pytest.raises(Forbidden):
        services.tenant_change_plan(tenant=tenant, plan="pro", actor=owner.user)
    assert no_plan_change(tenant)
    staff = UserFactory(is_staff=True)
    assert services.tenant_change_plan(tenant=tenant, plan="enterprise", actor=staff).plan.slug == "enterprise"


def test_another_tenants_subscription_changes_only_that_tenant(catalogue, hooks, stripe_emulator, free_tenant):
    tenant, owner, _ = free_tenant
    other = TenantFactory(plan=Plan.objects.get(slug="free"))
    MembershipFactory(tenant=other, role="owner")
    # A session for the other tenant's customer whose every label claims this tenant.
    claims = {"hearth_tenant": tenant.slug, "hearth_plan": "team"}
    session = stripe.checkout.Session.create(
        mode="subscription", customer=customer_get_or_create(tenant=other).id,
        line_items=checkout_line_items(Plan.objects.get(slug="team")), client_reference_id=str(tenant.pk),
        success_url="http://testserver/billing/", metadata=claims, subscription_data={"metadata": claims},
        **stripe_options())
    completed = pay(stripe_emulator, session.url)
    hooks.deliver("checkout.session.completed", object_id=completed["id"])
    hooks.deliver("customer.subscription.created", object_id=completed["subscription"])
    # This tenant's owner comes back from the other tenant's checkout.
    browser_of(owner.user).get(f"/billing/?checkout={completed['id']}")

    assert no_plan_change(tenant) and tenant.subscription_id == ""
    other.refresh_from_db()
    assert other.plan.slug == "team" and other.subscription_id == completed["subscription"]


def test_a_strangers_subscription_changes_no_tenant(catalogue, hooks, stripe_emulator, free_tenant):
    tenant, owner, _ = free_tenant
    claims = {"hearth_tenant": tenant.slug, "hearth_plan": "pro", "djstripe_subscriber": str(tenant.pk)}
    session = stripe.checkout.Session.create(
        mode="subscription", customer_email="stranger@example.test", client_reference_id=str(tenant.pk),
        line_items=checkout_line_items(Plan.objects.get(slug="pro")), success_url="http://testserver/billing/",
        metadata=claims, subscription_data={"metadata": claims}, **stripe_options())
    completed = pay(stripe_emulator, session.url)

    hooks.deliver("checkout.session.completed", object_id=completed["id"])
    hooks.deliver("customer.subscription.created", object_id=completed["subscription"])

    assert no_plan_change(tenant)
