"""Fixtures for subscriptions: Hearth's Stripe pointed at the emulator, its plans' prices, its webhook endpoint fed
by the emulator's signed deliveries, and tenants on Free with an owner's API client."""
import json
import urllib.request

import pytest
import stripe
from django.test import Client

from billing.catalogue import catalogue_sync
from billing.stripe_emulator.paying_customer import checkout_complete
from billing.webhooks import webhook_endpoint_ensure
from tenants.models import Plan
from tests.billing.conftest import WebhookReceiver, stripe_emulator
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

__all__ = ["stripe_emulator", "hearth_stripe", "catalogue", "hooks", "free_tenant", "Hooks", "pay",
           "checkout_session_id"]


@pytest.fixture
def hearth_stripe(stripe_emulator, monkeypatch, settings):
    """Hearth's settings and the stripe SDK pointed at the test emulator, as `make run` points them at its own."""
    monkeypatch.setattr(stripe, "api_base", stripe_emulator)
    settings.STRIPE_API_HOST = settings.STRIPE_API_BASE = stripe_emulator
    return stripe_emulator


@pytest.fixture
def catalogue(hearth_stripe, db):
    """The public paid plans' products and prices (billing_sync_plans; the emulator lives for the whole session)."""
    return catalogue_sync()


class Hooks:
    """The emulator posts every event, signed with Hearth's webhook secret, to a local receiver; `deliver` posts a
    received one, unchanged, to Hearth's dj-stripe endpoint as Stripe would."""

    def __init__(self, api_base, endpoint):
        self.receiver = WebhookReceiver()
        self.endpoint = endpoint
        self.path = endpoint.url.split("://", 1)[1].split("/", 1)[1]
        body = json.dumps({"url": self.receiver.url, "secret": endpoint.secret}).encode()
        request = urllib.request.Request(f"{api_base}/_config/webhooks/hearth-tests", data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
        urllib.request.urlopen(request, timeout=10).read()
        self.client = Client()

    def received(self, event_type, *, object_id=None, customer=None, match=None, timeout=10):
        """(raw body, Stripe-Signature) of the first delivery of `event_type` about that object or customer."""

        def wanted(event):
            obj = event["data"]["object"]
            return ((object_id is None or obj.get("id") == object_id)
                    and (customer is None or obj.get("customer") == customer)
                    and (match is None or match(event)))

        return self.receiver.wait_for(event_type, wanted, timeout=timeout)

    def post(self, body, signature, client=None):
        return (client or self.client).post(f"/{self.path}", data=body, content_type="application/json",
                                            HTTP_STRIPE_SIGNATURE=signature)

    def deliver(self, event_type, **match):
        response = self.post(*self.received(event_type, **match))
        assert response.status_code == 200, response.content
        return response

    def close(self):
        self.receiver.close()


@pytest.fixture
def hooks(hearth_stripe, db):
    endpoint = webhook_endpoint_ensure(base_url="http://testserver")
    hooks = Hooks(hearth_stripe, endpoint)
    yield hooks
    hooks.close()


@pytest.fixture
def free_tenant(db):
    """A tenant on Free with its owner's membership and API client: (tenant, owner membership, client)."""
    tenant = TenantFactory(plan=Plan.objects.get(slug="free"))
    owner = MembershipFactory(tenant=tenant, role="owner")
    return tenant, owner, api_client_for(owner)


def checkout_session_id(checkout_url):
    return checkout_url.rstrip("/").rsplit("/", 1)[1]


def pay(api_base, checkout_url, **kwargs):
    """The owner pays on the Checkout page; returns the completed session (customer, subscription)."""
    return checkout_complete(api_base=api_base, session_id=checkout_session_id(checkout_url), **kwargs)
