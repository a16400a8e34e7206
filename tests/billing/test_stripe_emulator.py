"""The offline Stripe over real HTTP, driven with the stripe SDK as Hearth drives Stripe."""
import http.client
import json
import time
import urllib.parse
import urllib.request

import pytest
import stripe

from billing.stripe_emulator.paying_customer import (
    EmulatorError,
    checkout_complete,
    subscription_advance,
    subscription_make_past_due,
)
from tests.billing.conftest import TEST_SECRET_KEY, free_port, start_emulator, unique, wait_until_answering


def subscribe(stripe_api, emulator, plans, **session_fields):
    session = stripe_api.checkout.Session.create(
        mode="subscription", line_items=[{"price": plans["base"].id, "quantity": 1}, {"price": plans["overage"].id}],
        success_url="https://hearth.test/billing/done?session={CHECKOUT_SESSION_ID}",
        cancel_url="https://hearth.test/billing", **session_fields)
    completed = checkout_complete(api_base=emulator, session_id=session.id)
    return session, completed, stripe_api.Subscription.retrieve(completed["subscription"])


def test_account_is_retrieved_as_djstripe_does(stripe_api):
    account = stripe_api.Account.retrieve()

    assert account.id.startswith("acct_")
    assert account.charges_enabled is True
    assert stripe_api.Account.retrieve(account.id).id == account.id
    with pytest.raises(stripe.InvalidRequestError):
        stripe_api.Account.retrieve("acct_someoneelse")


def test_unauthenticated_requests_are_refused(stripe_emulator):
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(stripe_emulator + "/v1/prices", timeout=5)

    assert refused.value.code == 401


def test_prices_are_found_by_lookup_key(stripe_api, plans):
    keys = [plans["base"].lookup_key, plans["overage"].lookup_key]

    found = stripe_api.Price.list(lookup_keys=keys, active=True)

    assert sorted(p.id for p in found.data) == sorted([plans["base"].id, plans["overage"].id])
    overage = stripe_api.Price.retrieve(plans["overage"].id).to_dict()
    assert overage["type"] == "recurring"
    assert overage["recurring"]["usage_type"] == "metered"
    assert overage["recurring"]["meter"] == plans["meter"].id
    assert overage["unit_amount"] == 12
    # Stripe still answers the legacy Plans API for a recurring price, with the same id.
    assert stripe_api.Plan.retrieve(plans["base"].id).amount == 2000


def test_a_lookup_key_belongs_to_one_price_unless_transferred(stripe_api, plans):
    key = plans["base"].lookup_key
    with pytest.raises(stripe.InvalidRequestError, match="already uses that lookup key"):
        stripe_api.Price.create(product=plans["product"].id, currency="usd", unit_amount=2500,
                                recurring={"interval": "month"}, lookup_key=key)

    moved = stripe_api.Price.create(product=plans["product"].id, currency="usd", unit_amount=2500,
                                    recurring={"interval": "month"}, lookup_key=key, transfer_lookup_key=True)

    assert [p.id for p in stripe_api.Price.list(lookup_keys=[key]).data] == [moved.id]
    assert stripe_api.Price.retrieve(plans["base"].id).lookup_key is None


def test_checkout_completed_sends_signed_webhooks(stripe_api, stripe_emulator, plans, webhooks):
    receiver, secret = webhooks
    assert secret.startswith("whsec_")
    customer = stripe_api.Customer.create(email="owner@acme.test", metadata={"tenant": "acme"})

    session, completed, subscription = subscribe(stripe_api, stripe_emulator, plans, customer=customer.id,
                                                 client_reference_id="tenant-42", metadata={"tenant": "42"})

    assert session.status == "open" and session.url.startswith(stripe_emulator + "/_emulator/checkout/")
    assert completed["status"] == "complete" and completed["payment_status"] == "paid"
    body, signature = receiver.wait_for("checkout.session.completed",
                                        lambda e: e["data"]["object"]["id"] == session.id)
    event = stripe.Webhook.construct_event(body, signature, secret)
    assert event.data.object.client_reference_id == "tenant-42"
    assert event.data.object.metadata.to_dict() == {"tenant": "42"}
    assert event.data.object.subscription == subscription.id
    assert event.data.object.customer == customer.id
    body, signature = receiver.wait_for("customer.subscription.created",
                                        lambda e: e["data"]["object"]["id"] == subscription.id)
    created = stripe.Webhook.construct_event(body, signature, secret).data.object
    assert created.status == "active"
    assert sorted(item.price.id for item in created["items"].data) == sorted([plans["base"].id, plans["overage"].id])
    receiver.wait_for("invoice.paid", lambda e: e["data"]["object"]["subscription"] == subscription.id)
    # A tampered payload does not verify.
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(body.replace(b"active", b"past_due"), signature, secret)
    # The events are also listed and retrieved as Stripe's are.
    assert stripe_api.Event.retrieve(event.id).type == "checkout.session.completed"
    assert event.id in [e.id for e in stripe_api.Event.list(type="checkout.session.completed", limit=100).data]


def test_checkout_session_is_retrieved_with_its_line_items(stripe_api, stripe_emulator, plans):
    session = stripe_api.checkout.Session.create(
        mode="subscription", customer_email="new@acme.test", success_url="https://hearth.test/done",
        line_items=[{"price": plans["base"].id, "quantity": 3}])

    again = stripe_api.checkout.Session.retrieve(session.id)
    items = stripe_api.checkout.Session.list_line_items(session.id)

    assert again.amount_total == 6000 and again.currency == "usd" and again.customer is None
    assert [(i.price.id, i.quantity) for i in items.data] == [(plans["base"].id, 3)]
    with urllib.request.urlopen(session.url, timeout=5) as page:
        assert b"Pay" in page.read()


def test_the_checkout_page_pays_and_returns_to_success_url(stripe_api, stripe_emulator, plans):
    session = stripe_api.checkout.Session.create(
        mode="subscription", customer_email="browser@acme.test", line_items=[{"price": plans["base"].id}],
        success_url="https://hearth.test/billing/done?session={CHECKOUT_SESSION_ID}")
    connection = http.client.HTTPConnection(urllib.parse.urlsplit(session.url).netloc, timeout=5)

    connection.request("POST", urllib.parse.urlsplit(session.url).path, body="card_number=4242424242424242",
                       headers={"Content-Type": "application/x-www-form-urlencoded"})
    response = connection.getresponse()

    assert response.status == 303
    assert response.getheader("Location") == f"https://hearth.test/billing/done?session={session.id}"
    assert stripe_api.checkout.Session.retrieve(session.id).status == "complete"


def test_checkout_refuses_quantities_on_metered_prices(stripe_api, plans):
    with pytest.raises(stripe.InvalidRequestError, match="metered"):
        stripe_api.checkout.Session.create(mode="subscription", success_url="https://hearth.test/done",
                                           line_items=[{"price": plans["overage"].id, "quantity": 1}])


def test_a_declined_card_leaves_the_session_open(stripe_api, stripe_emulator, plans):
    session = stripe_api.checkout.Session.create(mode="subscription", customer_email="poor@acme.test",
                                                 success_url="https://hearth.test/done",
                                                 line_items=[{"price": plans["base"].id}])

    with pytest.raises(EmulatorError) as declined:
        checkout_complete(api_base=stripe_emulator, session_id=session.id, card_number="4000000000000341")

    assert declined.value.status == 402
    assert json.loads(declined.value.body)["error"]["type"] == "card_error"
    assert stripe_api.checkout.Session.retrieve(session.id).status == "open"


def test_an_idempotency_key_replays_the_first_response(stripe_api):
    key = unique("idem")

    first = stripe_api.Customer.create(email="a@acme.test", idempotency_key=key)
    again = stripe_api.Customer.create(email="a@acme.test", idempotency_key=key)

    assert again.id == first.id
    assert again.last_response.headers.get("Idempotent-Replayed") == "true"
    assert stripe_api.Customer.create(email="a@acme.test").id != first.id
    with pytest.raises(stripe.IdempotencyError):
        stripe_api.Customer.create(email="b@acme.test", idempotency_key=key)


def test_an_idempotency_key_replays_an_error_too(stripe_api):
    key = unique("idem")
    with pytest.raises(stripe.InvalidRequestError) as first:
        stripe_api.Price.create(currency="usd", unit_amount=1, product="prod_missing", idempotency_key=key)
    with pytest.raises(stripe.InvalidRequestError) as again:
        stripe_api.Price.create(currency="usd", unit_amount=1, product="prod_missing", idempotency_key=key)

    assert again.value.http_status == first.value.http_status == 404


def test_a_meter_event_identifier_is_accepted_once(stripe_api, plans):
    customer = stripe_api.Customer.create(email="meter@acme.test")
    meter = plans["meter"]
    identifier = unique("rollup-acme-2026-12")
    start = int(time.time()) // 60 * 60

    event = stripe_api.billing.MeterEvent.create(event_name=meter.event_name, identifier=identifier,
                                                 payload={"stripe_customer_id": customer.id, "value": "7"})
    with pytest.raises(stripe.InvalidRequestError, match=identifier):
        stripe_api.billing.MeterEvent.create(event_name=meter.event_name, identifier=identifier,
                                             payload={"stripe_customer_id": customer.id, "value": "7"})
    stripe_api.billing.MeterEvent.create(event_name=meter.event_name,
                                         payload={"stripe_customer_id": customer.id, "value": "5"})

    assert event.identifier == identifier and event.payload["value"] == "7"
    summaries = stripe_api.billing.Meter.list_event_summaries(meter.id, customer=customer.id, start_time=start,
                                                              end_time=start + 120)
    assert [s.aggregated_value for s in summaries.data] == [12]
    for bad in ("seven", "NaN"):
        with pytest.raises(stripe.InvalidRequestError, match="must be a number"):
            stripe_api.billing.MeterEvent.create(event_name=meter.event_name,
                                                 payload={"stripe_customer_id": customer.id, "value": bad})
    with pytest.raises(stripe.InvalidRequestError, match="minute"):
        stripe_api.billing.Meter.list_event_summaries(meter.id, customer=customer.id, start_time=start + 1,
                                                      end_time=start + 120)


def test_meters_are_listed_and_one_event_name_has_one_active_meter(stripe_api, plans):
    assert plans["meter"].id in [m.id for m in stripe_api.billing.Meter.list(status="active", limit=100).data]
    with pytest.raises(stripe.InvalidRequestError, match="already exists"):
        stripe_api.billing.Meter.create(display_name="Again", event_name=plans["meter"].event_name,
                                        default_aggregation={"formula": "sum"})


def test_a_subscription_changes_price_with_prorations(stripe_api, stripe_emulator, plans, webhooks):
    receiver, secret = webhooks
    _, _, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="up@acme.test")
    base_item = next(i for i in subscription["items"].data if i.price.id == plans["base"].id)

    updated = stripe_api.Subscription.modify(subscription.id, items=[{"id": base_item.id, "price": plans["team"].id}],
                                             proration_behavior="always_invoice", metadata={"plan": "team"})

    assert updated.status == "active" and updated.metadata["plan"] == "team"
    item = next(i for i in updated["items"].data if i.id == base_item.id)
    assert item.price.id == plans["team"].id
    invoice = stripe_api.Invoice.retrieve(updated.latest_invoice)
    assert invoice.status == "paid"
    # Almost a whole month remains: about 5000 - 2000 is charged at once.
    assert 2900 <= invoice.amount_paid <= 3000
    body, signature = receiver.wait_for("customer.subscription.updated",
                                        lambda e: e["data"]["object"]["id"] == subscription.id
                                        and "items" in e["data"].get("previous_attributes", {}))
    assert stripe.Webhook.construct_event(body, signature, secret).data.object.metadata["plan"] == "team"


def test_no_proration_is_accepted_and_a_subscription_item_is_updated_alone(stripe_api, stripe_emulator, plans):
    _, _, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="seat@acme.test")
    base_item = next(i for i in subscription["items"].data if i.price.id == plans["base"].id)

    stripe_api.SubscriptionItem.modify(base_item.id, quantity=4, proration_behavior="none")
    stripe_api.Subscription.modify(subscription.id, items=[{"id": base_item.id, "price": plans["team"].id}],
                                   proration_behavior="none")

    item = stripe_api.SubscriptionItem.retrieve(base_item.id)
    assert (item.price.id, item.quantity) == (plans["team"].id, 4)
    assert stripe_api.InvoiceItem.list(customer=subscription.customer).data == []


def test_cancel_at_period_end_ends_the_subscription_when_the_period_is_advanced(
        stripe_api, stripe_emulator, plans, webhooks):
    receiver, _ = webhooks
    _, _, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="leave@acme.test")

    pending = stripe_api.Subscription.modify(subscription.id, cancel_at_period_end=True)
    assert pending.status == "active" and pending.cancel_at_period_end is True
    assert pending.cancel_at == subscription.current_period_end
    ended = subscription_advance(api_base=stripe_emulator, subscription_id=subscription.id)

    assert ended["status"] == "canceled" and ended["ended_at"]
    receiver.wait_for("customer.subscription.deleted", lambda e: e["data"]["object"]["id"] == subscription.id)


def test_cancel_ends_a_subscription_at_once(stripe_api, stripe_emulator, plans):
    _, _, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="now@acme.test")

    canceled = stripe_api.Subscription.cancel(subscription.id)

    assert canceled.status == "canceled"
    assert subscription.id not in [s.id for s in stripe_api.Subscription.list(customer=subscription.customer).data]


def test_a_failed_renewal_makes_the_subscription_past_due_until_the_invoice_is_paid(
        stripe_api, stripe_emulator, plans, webhooks):
    receiver, _ = webhooks
    _, _, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="late@acme.test")

    past_due = subscription_make_past_due(api_base=stripe_emulator, subscription_id=subscription.id)

    assert past_due["status"] == "past_due"
    receiver.wait_for("invoice.payment_failed", lambda e: e["data"]["object"]["subscription"] == subscription.id)
    receiver.wait_for("customer.subscription.updated",
                      lambda e: e["data"]["object"]["id"] == subscription.id
                      and e["data"]["object"]["status"] == "past_due")
    stripe_api.Invoice.pay(past_due["latest_invoice"])
    assert stripe_api.Subscription.retrieve(subscription.id).status == "active"
    receiver.wait_for("customer.subscription.updated",
                      lambda e: e["data"]["object"]["id"] == subscription.id
                      and e["data"]["object"]["status"] == "active"
                      and e["data"].get("previous_attributes") == {"status": "past_due"})


def test_a_renewal_invoices_the_metered_usage_of_the_ended_period(stripe_api, stripe_emulator, plans):
    _, completed, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="heavy@acme.test")
    for hour, value in enumerate(["30", "12"]):
        stripe_api.billing.MeterEvent.create(event_name=plans["meter"].event_name,
                                             identifier=f"{subscription.id}-{hour}",
                                             payload={"stripe_customer_id": completed["customer"], "value": value})

    renewed = subscription_advance(api_base=stripe_emulator, subscription_id=subscription.id)

    assert renewed["status"] == "active"
    assert renewed["current_period_start"] > subscription.current_period_start - 1
    invoice = stripe_api.Invoice.retrieve(renewed["latest_invoice"])
    assert invoice.status == "paid"
    assert invoice.amount_paid == 2000 + 42 * 12
    assert sorted(line.amount for line in invoice.lines.data) == [42 * 12, 2000]


def test_the_next_invoice_is_previewed_with_usage_and_prorations(stripe_api, stripe_emulator, plans):
    _, completed, subscription = subscribe(stripe_api, stripe_emulator, plans, customer_email="peek@acme.test")
    stripe_api.billing.MeterEvent.create(event_name=plans["meter"].event_name,
                                         payload={"stripe_customer_id": completed["customer"], "value": "10"})
    base_item = next(i for i in subscription["items"].data if i.price.id == plans["base"].id)
    stripe_api.SubscriptionItem.modify(base_item.id, quantity=2)

    preview = stripe_api.Invoice.create_preview(customer=completed["customer"], subscription=subscription.id)

    prorations = [line.amount for line in preview.lines.data if line.proration]
    assert len(prorations) == 2 and 1900 <= sum(prorations) <= 2000
    assert 2 * 2000 in [line.amount for line in preview.lines.data if not line.proration]
    assert 10 * 12 in [line.amount for line in preview.lines.data]
    assert preview.amount_due == 4000 + 120 + sum(prorations)
    # A preview invoices nothing: the prorations are still pending.
    assert len(stripe_api.InvoiceItem.list(customer=completed["customer"]).data) == 2


def test_a_portal_session_gives_a_url(stripe_api, stripe_emulator):
    customer = stripe_api.Customer.create(email="portal@acme.test")

    session = stripe_api.billing_portal.Session.create(customer=customer.id, return_url="https://hearth.test/billing")

    assert session.url.startswith(stripe_emulator + "/_emulator/billing_portal/")
    with urllib.request.urlopen(session.url, timeout=5) as page:
        assert b"https://hearth.test/billing" in page.read()


def test_webhook_endpoints_show_their_secret_only_at_creation(stripe_api):
    created = stripe_api.WebhookEndpoint.create(url="http://127.0.0.1:9/hook",
                                                enabled_events=["checkout.session.completed"])
    try:
        assert created.secret.startswith("whsec_")
        again = stripe_api.WebhookEndpoint.retrieve(created.id)
        assert "secret" not in again.to_dict()
        assert again.enabled_events == ["checkout.session.completed"]
    finally:
        stripe_api.WebhookEndpoint.delete(created.id)


def test_unknown_parameters_are_refused_as_stripe_refuses_them(stripe_api):
    with pytest.raises(stripe.InvalidRequestError, match="unknown parameter: colour"):
        stripe_api.billing.Meter.create(display_name="x", event_name=unique("x"),
                                        default_aggregation={"formula": "sum"}, colour="red")


def test_state_survives_a_restart(tmp_path):
    def run():
        port = free_port()
        process = start_emulator(port, tmp_path / "emulator.log", "--state", str(tmp_path / "state.pickle"))
        wait_until_answering(f"http://127.0.0.1:{port}", process)
        return process, f"http://127.0.0.1:{port}"

    process, url = run()
    assert f"Stripe emulator listening on {url}" in (tmp_path / "emulator.log").read_text()
    try:
        client = stripe.StripeClient(TEST_SECRET_KEY, base_addresses={"api": url})
        price = client.v1.prices.create(params={"currency": "usd", "unit_amount": 100,
                                                "product_data": {"name": "Kept"}, "lookup_key": "kept"})
        client.v1.webhook_endpoints.create(params={"url": "http://127.0.0.1:9/x", "enabled_events": ["*"]})
    finally:
        process.terminate()
        process.wait(timeout=10)
    process, url = run()
    try:
        client = stripe.StripeClient(TEST_SECRET_KEY, base_addresses={"api": url})
        assert [p.id for p in client.v1.prices.list(params={"lookup_keys": ["kept"]}).data] == [price.id]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_an_unemulated_url_answers_as_stripe_does(stripe_api):
    with pytest.raises(stripe.InvalidRequestError, match="Unrecognized request URL"):
        stripe_api.Quote.list()
