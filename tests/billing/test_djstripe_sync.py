"""dj-stripe 2.11 syncs what Hearth keeps from Stripe (account, product, price, customer, subscription) from the
emulator, as it would from Stripe."""
import json

import pytest
import stripe

from billing.stripe_emulator.paying_customer import checkout_complete
from tests.billing.conftest import unique

pytestmark = pytest.mark.django_db


def test_djstripe_syncs_a_paid_subscription(stripe_api, stripe_emulator, plans, settings):
    from djstripe import models as djstripe_models

    account = djstripe_models.Account.get_or_retrieve_for_api_key(settings.STRIPE_TEST_SECRET_KEY)
    product = djstripe_models.Product.sync_from_stripe_data(stripe_api.Product.retrieve(plans["product"].id))
    price = djstripe_models.Price.sync_from_stripe_data(stripe_api.Price.retrieve(plans["base"].id))
    session = stripe_api.checkout.Session.create(
        mode="subscription", customer_email=f"{unique('owner')}@acme.test", success_url="https://hearth.test/done",
        line_items=[{"price": plans["base"].id, "quantity": 2}, {"price": plans["overage"].id}])
    completed = checkout_complete(api_base=stripe_emulator, session_id=session.id)
    customer = djstripe_models.Customer.sync_from_stripe_data(stripe_api.Customer.retrieve(completed["customer"]))
    subscription = djstripe_models.Subscription.sync_from_stripe_data(
        stripe_api.Subscription.retrieve(completed["subscription"]))

    assert account.id.startswith("acct_")
    assert price.product == product and price.unit_amount == 2000
    assert subscription.customer == customer and subscription.status == "active"
    assert sorted((item.price.id, item.quantity) for item in subscription.items.all()) == sorted(
        [(plans["base"].id, 2), (plans["overage"].id, None)])
    assert subscription.current_period_end > subscription.current_period_start
    invoice = djstripe_models.Invoice.sync_from_stripe_data(stripe_api.Invoice.retrieve(completed["invoice"]))
    assert invoice.customer == customer and invoice.stripe_data["amount_paid"] == 4000


def test_djstripe_processes_the_webhooks_of_a_checkout(stripe_api, stripe_emulator, plans, webhooks,
                                                       settings):
    from djstripe import models as djstripe_models

    receiver, secret = webhooks
    djstripe_models.Account.get_or_retrieve_for_api_key(settings.STRIPE_TEST_SECRET_KEY)
    session = stripe_api.checkout.Session.create(
        mode="subscription", customer_email=f"{unique('owner')}@acme.test", success_url="https://hearth.test/done",
        line_items=[{"price": plans["base"].id}])
    completed = checkout_complete(api_base=stripe_emulator, session_id=session.id)
    deliveries = [
        receiver.wait_for("customer.subscription.created",
                          lambda e: e["data"]["object"]["id"] == completed["subscription"]),
        receiver.wait_for("checkout.session.completed", lambda e: e["data"]["object"]["id"] == session.id),
    ]

    for body, signature in deliveries:
        stripe.Webhook.construct_event(body, signature, secret)
        djstripe_models.Event.process(data=json.loads(body))

    synced = djstripe_models.Subscription.objects.get(id=completed["subscription"])
    assert synced.status == "active" and synced.customer.id == completed["customer"]
    assert djstripe_models.Session.objects.filter(id=session.id).exists()


def test_djstripe_verifies_and_processes_a_delivered_webhook(stripe_api, stripe_emulator, plans, settings,
                                                             rf):
    import uuid

    from djstripe import models as djstripe_models

    from tests.billing.conftest import WebhookReceiver

    djstripe_models.Account.get_or_retrieve_for_api_key(settings.STRIPE_TEST_SECRET_KEY)
    receiver = WebhookReceiver()
    created = stripe_api.WebhookEndpoint.create(url=receiver.url, enabled_events=["customer.subscription.created"],
                                                metadata={"djstripe_uuid": str(uuid.uuid4())})
    try:
        endpoint = djstripe_models.WebhookEndpoint.sync_from_stripe_data(created)
        session = stripe_api.checkout.Session.create(
            mode="subscription", customer_email=f"{unique('hook')}@acme.test",
            success_url="https://hearth.test/done", line_items=[{"price": plans["base"].id}])
        completed = checkout_complete(api_base=stripe_emulator, session_id=session.id)
        body, signature = receiver.wait_for("customer.subscription.created",
                                            lambda e: e["data"]["object"]["id"] == completed["subscription"])
    finally:
        stripe_api.WebhookEndpoint.delete(created.id)
        receiver.close()

    def deliver(payload):
        request = rf.post("/stripe/webhook/", data=payload, content_type="application/json",
                          HTTP_STRIPE_SIGNATURE=signature)
        return djstripe_models.WebhookEventTrigger.from_request(request, webhook_endpoint=endpoint)

    forged = deliver(body.replace(b'"active"', b'"canceled"'))
    trigger = deliver(body)

    assert endpoint.secret == created.secret
    assert forged.valid is False and forged.processed is False
    assert trigger.valid is True and trigger.processed is True
    assert djstripe_models.Subscription.objects.get(id=completed["subscription"]).status == "active"
