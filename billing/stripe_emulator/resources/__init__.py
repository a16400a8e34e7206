"""The Stripe objects Hearth uses that localstripe lacks or gets wrong, kept in localstripe's store beside its own.

One module per kind of object, each importing what it builds on (common first of all, which patches localstripe's
expansion); importing the package defines them all."""
from billing.stripe_emulator.resources.checkout import (
    CheckoutSession,
    PortalSession,
    WebhookEndpoint,
    product_features,
)
from billing.stripe_emulator.resources.common import API_VERSION, IDENTIFIER_WINDOW_SECONDS  # noqa: F401
from billing.stripe_emulator.resources.invoices import invoice_preview
from billing.stripe_emulator.resources.meters import Meter, MeterEvent, MeterEventSummary  # noqa: F401
from billing.stripe_emulator.resources.prices import Account, Price
from billing.stripe_emulator.resources.subscriptions import Subscription, SubscriptionItem, item_input  # noqa: F401

__all__ = ["Account", "CheckoutSession", "Meter", "MeterEvent", "PortalSession", "Price", "Subscription",
           "SubscriptionItem", "WebhookEndpoint", "invoice_preview", "product_features"]
