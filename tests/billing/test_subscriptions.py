"""A paid plan starts when it is paid: onboarding on Free, Checkout, the webhook, and the subscription's later life
(upgrade, downgrade and cancellation at the period's end, past due, grace, suspension for payment), all against the
emulator over HTTP and PostgreSQL."""
from datetime import timedelta

import pytest
import time_machine
from django.core.management import call_command
from django.utils import timezone

from billing.catalogue import stripe_options
from billing.stripe_emulator.paying_customer import subscription_advance, subscription_make_past_due
from billing.subscriptions import customer_id_of, subscription_sync
from tenants import policy
from tenants.exceptions import PaymentRequired
from tenants.models import AuditLog, OutboxEvent, Plan
from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.billing.fixtures_subscriptions import pay
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def choose(client, plan):
    return client.post("/api/v1/tenant/plan", {"plan": plan}, format="json")


def subscribe(stripe_emulator, hooks, tenant, client, plan="pro"):
    """Choose `plan` through the API, pay, and deliver the webhooks; returns the completed Checkout Session."""
    response = choose(client, plan)
    assert response.status_code == 202, response.content
    completed = pay(stripe_emulator, response.json()["checkout_url"])
    hooks.deliver("customer.subscription.created", object_id=completed["subscription"])
    hooks.deliver("checkout.session.completed", object_id=completed["id"])
    tenant.refresh_from_db()
    return completed


def test_billing_sync_plans_is_idempotent(hearth_stripe, capsys):
    call_command("billing_sync_plans")
    first = capsys.readouterr().out
    call_command("billing_sync_plans")
    second = capsys.readouterr().out

    assert "price pro " in first and "price pro_overage " in first and "meter workspace_hours" in first
    assert "enterprise" not in first and "price free" not in first
    assert second.strip().endswith("0 created, 0 updated"), second
    import stripe

    from billing.catalogue import prices_by_lookup_key

    prices = prices_by_lookup_key("starter", "pro", "pro_overage", "team", "team_overage")
    assert sorted(prices) == ["pro", "pro_overage", "starter", "team", "team_overage"]
    assert prices["pro"].unit_amount == 1000 and prices["pro_overage"].unit_amount == 50
    assert prices["pro_overage"].recurring["usage_type"] == "metered" and prices["pro_overage"].recurring["meter"]
    product = stripe.Product.retrieve(prices["pro"].product, **stripe_options())
    assert product.name == "Hearth Pro" and product.metadata["hearth_plan"] == "pro"


def test_a_changed_plan_price_gets_a_new_stripe_price(hearth_stripe, catalogue):
    from billing.catalogue import catalogue_sync, prices_by_lookup_key

    starter = Plan.objects.get(slug="starter")
    old = prices_by_lookup_key("starter")["starter"]
    starter.monthly_price_cents = 700
    starter.save()
    report = catalogue_sync()
    new = prices_by_lookup_key("starter")["starter"]
    try:
        assert report.updated == 1 and new.id != old.id and new.unit_amount == 700
    finally:
        starter.monthly_price_cents = 500
        starter.save()
        catalogue_sync()


def test_onboard_free_choose_pro_pay_webhook_pro_active(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    response = choose(client, "pro")

    assert response.status_code == 202
    body = response.json()
    assert body["plan"] == "free" and body["checkout_url"].startswith(stripe_emulator)
    tenant.refresh_from_db()
    assert tenant.plan.slug == "free"  # not before it is paid

    completed = pay(stripe_emulator, body["checkout_url"])
    assert completed["customer"] == customer_id_of(tenant)
    hooks.deliver("checkout.session.completed", object_id=completed["id"])
    tenant.refresh_from_db()

    assert tenant.plan.slug == "pro" and tenant.subscription_status == "active"
    assert tenant.subscription_id == completed["subscription"] and tenant.current_period_end > timezone.now()
    change = AuditLog.objects.get(tenant=tenant, action="tenant.plan_changed")
    assert change.data == {"from": "free", "to": "pro"} and change.actor_label == "stripe"
    assert OutboxEvent.objects.filter(tenant=tenant, type="tenant.plan_changed").exists()
    assert OutboxEvent.objects.filter(tenant=tenant, type="billing.subscription_changed").exists()
    # The later deliveries about the same subscription change nothing more.
    hooks.deliver("customer.subscription.created", object_id=completed["subscription"])
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.plan_changed").count() == 1

    billing = client.get("/api/v1/billing").json()
    assert billing["plan"] == "pro" and billing["status"] == "active" and billing["currency"] == "usd"
    assert billing["upcoming_amount_cents"] == 1000 and billing["period_end"]


def test_upgrade_is_prorated_now(stripe_emulator, catalogue, hooks, free_tenant):
    import stripe

    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "starter")
    assert tenant.plan.slug == "starter"

    response = choose(client, "team")

    assert response.status_code == 200 and response.json()["outcome"] == "changed"
    assert response.json()["plan"]["slug"] == "team"
    subscription = stripe.Subscription.retrieve(completed["subscription"], **stripe_options())
    keys = sorted(item["price"]["lookup_key"] for item in subscription["items"]["data"])
    assert keys == ["team", "team_overage"]
    upcoming = client.get("/api/v1/billing").json()["upcoming_amount_cents"]
    assert 2500 < upcoming < 2500 + 2000 + 1  # next period plus the prorated difference of this one


def test_downgrade_waits_for_the_period_end(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "pro")

    response = choose(client, "starter")

    assert response.status_code == 200
    assert response.json()["outcome"] == "scheduled" and response.json()["pending_plan"] == "starter"
    tenant.refresh_from_db()
    assert tenant.plan.slug == "pro" and tenant.pending_plan.slug == "starter"
    assert AuditLog.objects.filter(tenant=tenant, action="billing.downgrade_scheduled").exists()

    subscription_advance(api_base=stripe_emulator, subscription_id=completed["subscription"])
    hooks.deliver("customer.subscription.updated", object_id=completed["subscription"],
                  match=lambda e: "current_period_end" in e["data"].get("previous_attributes", {}))
    tenant.refresh_from_db()

    assert tenant.plan.slug == "starter" and tenant.pending_plan is None
    assert client.get("/api/v1/billing").json()["upcoming_amount_cents"] == 500


def test_downgrade_the_tenant_does_not_fit_is_refused(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    subscribe(stripe_emulator, hooks, tenant, client, "starter")
    choose(client, "team")  # 3 seats
    MembershipFactory(tenant=tenant)

    response = choose(client, "pro")  # 1 seat

    assert response.status_code == 409 and response.json()["code"] == "seat_limit"
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team" and tenant.pending_plan is None


def test_free_cancels_at_the_period_end(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "pro")

    response = choose(client, "free")

    assert response.status_code == 200 and response.json()["pending_plan"] == "free"
    tenant.refresh_from_db()
    assert tenant.plan.slug == "pro"

    subscription_advance(api_base=stripe_emulator, subscription_id=completed["subscription"])
    hooks.deliver("customer.subscription.deleted", object_id=completed["subscription"])
    tenant.refresh_from_db()

    assert tenant.plan.slug == "free" and tenant.subscription_status == "canceled" and tenant.pending_plan is None
    assert client.get("/api/v1/billing").json()["status"] == "canceled"
    # Free again: the next paid plan goes through checkout again.
    assert choose(client, "pro").status_code == 202


def test_past_due_grace_then_402_then_paid_again(stripe_emulator, catalogue, hooks, free_tenant, smtp_server,
                                                 settings, django_capture_on_commit_callbacks):
    import stripe

    from metering.entitlements import entitlement_check

    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "pro")
    settings.BILLING_GRACE_DAYS = 7

    subscription_make_past_due(api_base=stripe_emulator, subscription_id=completed["subscription"])
    with django_capture_on_commit_callbacks(execute=True):
        hooks.deliver("customer.subscription.updated", object_id=completed["subscription"],
                      match=lambda e: e["data"]["object"]["status"] == "past_due")
    tenant.refresh_from_db()

    assert tenant.subscription_status == "past_due" and tenant.plan.slug == "pro"
    assert timedelta(days=6, hours=23) < tenant.payment_due_by - timezone.now() <= timedelta(days=7)
    mail = smtp_server.wait_for(to=owner.user.email, subject_contains="Payment failed")
    assert "/billing/" in smtp_server.body(mail)
    entitlement_check(tenant=tenant)  # opens still work in the grace period
    from django.test import Client

    browser = Client()
    browser.force_login(owner.user)
    page = browser.get("/billing/").content.decode()
    assert "billing-banner-warning" in page and "A payment for" in page

    with time_machine.travel(timezone.now() + timedelta(days=7, minutes=1)):
        with pytest.raises(PaymentRequired):
            entitlement_check(tenant=tenant)
        assert "billing-banner-danger" in browser.get("/").content.decode()
        assert browser.get("/billing/").status_code == 200  # members can still sign in and pay
        with pytest.raises(PaymentRequired) as refused:
            policy.require_active(tenant)
        assert refused.value.status_code == 402 and refused.value.code == "payment_required"

    invoice = stripe.Subscription.retrieve(completed["subscription"], **stripe_options()).latest_invoice
    stripe.Invoice.pay(invoice, **stripe_options())
    hooks.deliver("customer.subscription.updated", object_id=completed["subscription"],
                  match=lambda e: e["data"]["object"]["status"] == "active"
                  and e["data"].get("previous_attributes", {}).get("status") == "past_due")
    tenant.refresh_from_db()

    assert tenant.subscription_status == "active" and tenant.payment_due_by is None
    with time_machine.travel(timezone.now() + timedelta(days=8)):
        entitlement_check(tenant=tenant)


def test_sync_is_idempotent_and_reads_the_current_state(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    subscribe(stripe_emulator, hooks, tenant, client, "pro")
    audits = AuditLog.objects.filter(tenant=tenant).count()

    for _ in range(3):
        subscription_sync(tenant=tenant)

    assert AuditLog.objects.filter(tenant=tenant).count() == audits


def test_a_later_choice_replaces_a_scheduled_change(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "team")

    assert choose(client, "free").json()["pending_plan"] == "free"
    assert choose(client, "starter").json()["pending_plan"] == "starter"  # the cancellation is withdrawn
    kept = choose(client, "team").json()  # the current plan again: the downgrade is dropped
    assert kept["outcome"] == "unchanged" and kept["pending_plan"] is None
    tenant.refresh_from_db()
    assert tenant.pending_plan is None and tenant.plan.slug == "team"

    subscription_advance(api_base=stripe_emulator, subscription_id=completed["subscription"])
    hooks.deliver("customer.subscription.updated", object_id=completed["subscription"],
                  match=lambda e: "current_period_end" in e["data"].get("previous_attributes", {}))
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team" and tenant.subscription_status == "active"


def test_an_overdue_tenant_gets_402_on_open_and_keeps_its_data(free_tenant):
    from workspaces.models import Workspace, WorkspaceTemplate
    from workspaces.services import workspace_create

    tenant, owner, client = free_tenant
    template = WorkspaceTemplate.objects.filter(enabled=True).first()
    workspace = workspace_create(tenant=tenant, owner=owner.user, name="thesis", template=template)
    tenant.payment_due_by = timezone.now() - timedelta(minutes=1)
    tenant.subscription_status = "past_due"
    tenant.save()

    response = client.post(f"/api/v1/workspaces/{workspace.pk}/open", format="json")

    assert response.status_code == 402 and response.json()["code"] == "payment_required"
    assert "Billing page" in response.json()["detail"]
    assert Workspace.objects.filter(pk=workspace.pk).exists()
    assert client.get("/api/v1/billing").json()["status"] == "past_due"  # and the owner can still see and pay


def test_an_ended_subscription_does_not_undo_what_staff_set_later(stripe_emulator, catalogue, hooks, free_tenant):
    import stripe

    from tenants import services
    from tests.factories import UserFactory

    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "pro")
    stripe.Subscription.cancel(completed["subscription"], **stripe_options())
    deleted = hooks.received("customer.subscription.deleted", object_id=completed["subscription"])
    assert hooks.post(*deleted).status_code == 200
    tenant.refresh_from_db()
    assert tenant.plan.slug == "free"

    services.tenant_change_plan(tenant=tenant, plan="enterprise", actor=UserFactory(is_staff=True))
    hooks.deliver("invoice.paid", customer=completed["customer"])  # an old subscription's event, late
    subscription_sync(tenant=tenant)

    tenant.refresh_from_db()
    assert tenant.plan.slug == "enterprise"


def test_offboarding_ends_the_subscription(stripe_emulator, catalogue, hooks, free_tenant):
    import stripe

    from tenants import services

    tenant, owner, client = free_tenant
    completed = subscribe(stripe_emulator, hooks, tenant, client, "pro")

    services.tenant_offboard(tenant=tenant, actor=owner.user)

    assert stripe.Subscription.retrieve(completed["subscription"], **stripe_options()).status == "canceled"
    assert AuditLog.objects.filter(tenant_slug=tenant.slug, action="billing.subscription_canceled").exists()
    # Its webhook finds no tenant any more, and is answered.
    hooks.deliver("customer.subscription.deleted", object_id=completed["subscription"])
