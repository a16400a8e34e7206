"""Stripe's webhooks at dj-stripe's endpoint: verified, processed once, in any order, and two at once for one
subscription leave the state Stripe has."""
import hashlib
import hmac
import json
import threading
import time

import pytest
from django.db import connection
from django.test import Client

from billing.stripe_emulator.paying_customer import subscription_advance, subscription_make_past_due
from billing.subscriptions import customer_id_of
from tenants.models import AuditLog, Tenant
from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.billing.fixtures_subscriptions import pay

pytestmark = pytest.mark.django_db


def sign(body, secret, timestamp=None):
    timestamp = int(timestamp or time.time())
    mac = hmac.new(secret.encode(), f"{timestamp}.{body.decode()}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def checkout(client, stripe_emulator, plan="pro"):
    response = client.post("/api/v1/tenant/plan", {"plan": plan}, format="json")
    assert response.status_code == 202, response.content
    return pay(stripe_emulator, response.json()["checkout_url"])


def test_a_forged_webhook_is_400_and_changes_nothing(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    completed = checkout(client, stripe_emulator)
    body, signature = hooks.received("customer.subscription.created", object_id=completed["subscription"])
    audits = AuditLog.objects.filter(tenant=tenant).count()

    tampered = hooks.post(body.replace(b'"active"', b'"trialing"'), signature)
    wrong_secret = hooks.post(body, sign(body, "whsec_not_the_secret"))
    unsigned = hooks.client.post(f"/{hooks.path}", data=body, content_type="application/json")

    assert (tampered.status_code, wrong_secret.status_code, unsigned.status_code) == (400, 400, 400)
    tenant.refresh_from_db()
    assert tenant.plan.slug == "free" and tenant.subscription_status == ""
    assert AuditLog.objects.filter(tenant=tenant).count() == audits


def test_a_replayed_event_changes_nothing_the_second_time(stripe_emulator, catalogue, hooks, free_tenant):
    import stripe

    from billing.catalogue import stripe_options

    tenant, owner, client = free_tenant
    completed = checkout(client, stripe_emulator)
    created = hooks.received("customer.subscription.created", object_id=completed["subscription"])
    assert hooks.post(*created).status_code == 200
    tenant.refresh_from_db()
    assert tenant.plan.slug == "pro"
    stripe.Subscription.cancel(completed["subscription"], **stripe_options())
    hooks.deliver("customer.subscription.deleted", object_id=completed["subscription"])
    audits = AuditLog.objects.filter(tenant=tenant).count()

    assert hooks.post(*created).status_code == 200  # the same delivery again, still within the signature's tolerance

    tenant.refresh_from_db()
    assert tenant.plan.slug == "free" and tenant.subscription_status == "canceled"
    assert AuditLog.objects.filter(tenant=tenant).count() == audits


def test_an_older_event_after_a_newer_one_leaves_the_newer_state(stripe_emulator, catalogue, hooks, free_tenant):
    tenant, owner, client = free_tenant
    completed = checkout(client, stripe_emulator)
    subscription_make_past_due(api_base=stripe_emulator, subscription_id=completed["subscription"])

    hooks.deliver("customer.subscription.updated", object_id=completed["subscription"],
                  match=lambda e: e["data"]["object"]["status"] == "past_due")
    hooks.deliver("customer.subscription.created", object_id=completed["subscription"])  # says "active"
    tenant.refresh_from_db()

    assert tenant.subscription_status == "past_due" and tenant.payment_due_by is not None
    assert tenant.plan.slug == "pro"


def test_an_unknown_event_type_is_ignored(hooks, free_tenant, hearth_stripe):
    tenant, owner, client = free_tenant
    body = json.dumps({
        "id": "evt_hearth_unknown_1", "object": "event", "type": "hearth.never_heard_of_it", "livemode": False,
        "api_version": "2026-08-26.dahlia", "created": int(time.time()), "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "data": {"object": {"object": "subscription", "id": "sub_x", "status": "active", "customer": "cus_x"}},
    }).encode()

    response = hooks.post(body, sign(body, hooks.endpoint.secret))

    assert response.status_code == 200
    tenant.refresh_from_db()
    assert tenant.plan.slug == "free" and not AuditLog.objects.filter(tenant=tenant, action__startswith="billing.")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_two_events_for_one_subscription_at_once_leave_the_right_state(stripe_emulator, catalogue, hooks,
                                                                      free_tenant):
    tenant, owner, client = free_tenant
    completed = checkout(client, stripe_emulator)
    subscription_make_past_due(api_base=stripe_emulator, subscription_id=completed["subscription"])
    deliveries = [
        hooks.received("customer.subscription.created", object_id=completed["subscription"]),
        hooks.received("checkout.session.completed", object_id=completed["id"]),
        hooks.received("customer.subscription.updated", object_id=completed["subscription"],
                       match=lambda e: e["data"]["object"]["status"] == "past_due"),
    ]
    barrier = threading.Barrier(len(deliveries))
    codes = [None] * len(deliveries)

    def deliver(n, body, signature):
        try:
            barrier.wait()
            codes[n] = hooks.post(body, signature, client=Client()).status_code
        finally:
            connection.close()

    threads = [threading.Thread(target=deliver, args=(n, *d)) for n, d in enumerate(deliveries)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert codes == [200, 200, 200]
    tenant = Tenant.objects.get(pk=tenant.pk)
    assert tenant.plan.slug == "pro" and tenant.subscription_status == "past_due"
    assert tenant.subscription_id == completed["subscription"] and customer_id_of(tenant) == completed["customer"]
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.plan_changed").count() == 1


def test_every_event_of_a_subscriptions_life_is_accepted(stripe_emulator, catalogue, hooks, free_tenant):
    """dj-stripe syncs what each event names (invoices, payment intents, prices, …) from the offline Stripe too."""
    tenant, owner, client = free_tenant
    completed = checkout(client, stripe_emulator)
    subscription_make_past_due(api_base=stripe_emulator, subscription_id=completed["subscription"])
    subscription_advance(api_base=stripe_emulator, subscription_id=completed["subscription"])
    hooks.received("customer.subscription.updated", object_id=completed["subscription"],
                   match=lambda e: e["data"]["object"]["status"] == "past_due"
                   and "current_period_end" in e["data"].get("previous_attributes", {}))
    time.sleep(1.5)  # the deliveries of the last request's other events
    while not hooks.receiver.deliveries.empty():
        hooks.receiver.seen.append(hooks.receiver.deliveries.get())

    answers = {}
    for body, signature in hooks.receiver.seen:
        event_type = json.loads(body)["type"]
        answers.setdefault(event_type, set()).add(hooks.post(body, signature, client=Client(
            raise_request_exception=False)).status_code)

    assert {"checkout.session.completed", "customer.subscription.created", "invoice.paid", "invoice.payment_failed",
            "payment_intent.succeeded"} <= set(answers)
    assert all(codes == {200} for codes in answers.values()), answers
    import stripe

    from billing.catalogue import stripe_options

    tenant.refresh_from_db()
    now = stripe.Subscription.retrieve(completed["subscription"], **stripe_options()).status
    assert tenant.plan.slug == "pro" and tenant.subscription_status == now
