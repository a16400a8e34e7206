"""Product features, webhook endpoints, Checkout Sessions (paid by the paying-customer helper) and customer-portal
sessions."""
from datetime import UTC, datetime

from localstripe.errors import UserError
from localstripe.resources import (
    Customer,
    List,
    PaymentMethod,
    Plan,
    Product,
    StripeObject,
    random_id,
    store,
    try_convert_to_bool,
    try_convert_to_int,
)
from localstripe.webhooks import _webhooks, register_webhook

from billing.stripe_emulator.resources.common import Exported, emit, invalid, reject_unknown
from billing.stripe_emulator.resources.subscriptions import Subscription, item_input


def product_features(id, limit=None, starting_after=None, **kwargs):
    """Product features (entitlements) are not emulated: every product has none. dj-stripe asks when it syncs one."""
    Product._api_retrieve(id)
    return List(f"/v1/products/{id}/features", limit=limit, starting_after=starting_after)


class WebhookEndpoint(StripeObject):
    object = "webhook_endpoint"
    _id_prefix = "we_"

    def __init__(self, url=None, enabled_events=None, description=None, metadata=None, api_version=None,
                 connect=False, **kwargs):
        reject_unknown(kwargs)
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise invalid("Invalid URL: url", "url")
        if not isinstance(enabled_events, list) or not enabled_events:
            raise invalid("Missing required param: enabled_events.", "enabled_events")
        super().__init__()
        self.url = url
        self.enabled_events = enabled_events
        self.description = description
        self.metadata = metadata or {}
        self.api_version = api_version
        self.application = None
        self.status = "enabled"
        self._secret = "whsec_" + random_id(32)
        self._register()

    def _register(self):
        if self.status == "enabled":
            register_webhook(self.id, self.url, self._secret,
                             None if "*" in self.enabled_events else list(self.enabled_events))
        else:
            _webhooks.pop(self.id, None)

    @classmethod
    def _api_create(cls, **data):
        endpoint = cls(**data)
        exported = endpoint._export()
        exported["secret"] = endpoint._secret
        return Exported(exported)

    def _update(self, url=None, enabled_events=None, description=None, metadata=None, disabled=None, **kwargs):
        reject_unknown(kwargs)
        if url is not None:
            self.url = url
        if enabled_events is not None:
            self.enabled_events = enabled_events
        if description is not None:
            self.description = description
        if metadata:
            self.metadata.update(metadata)
        if disabled is not None:
            self.status = "disabled" if try_convert_to_bool(disabled) else "enabled"
        self._register()

    @classmethod
    def _api_delete(cls, id):
        _webhooks.pop(id, None)
        return super()._api_delete(id)

    @classmethod
    def _reregister_all(cls):
        """localstripe keeps its webhook targets in memory only; rebuild them from stored endpoints."""
        for key, value in list(store.items()):
            if key.startswith("webhook_endpoint:"):
                value._register()


class CheckoutSession(StripeObject):
    object = "checkout.session"
    _id_prefix = "cs_test_"

    def __init__(self, mode=None, line_items=None, customer=None, customer_email=None, success_url=None,
                 cancel_url=None, client_reference_id=None, metadata=None, subscription_data=None,
                 allow_promotion_codes=None, billing_address_collection=None, payment_method_types=None,
                 locale=None, expires_at=None, _origin="http://127.0.0.1:8420", **kwargs):
        reject_unknown(kwargs)
        if mode != "subscription":
            raise invalid("Only mode=subscription is emulated.", "mode")
        if not isinstance(line_items, list) or not line_items:
            raise invalid("Missing required param: line_items.", "line_items")
        checked = [item_input(raw, f"line_items[{n}]") for n, raw in enumerate(line_items)]
        if customer is not None:
            Customer._api_retrieve(customer)
            if customer_email is not None:
                raise invalid("You may only specify one of these parameters: customer, customer_email.",
                              "customer_email")
        if success_url is not None and not str(success_url).startswith(("http://", "https://")):
            raise invalid("Not a valid URL", "success_url")
        if subscription_data is not None and not isinstance(subscription_data, dict):
            raise invalid("Invalid object: subscription_data", "subscription_data")
        super().__init__()
        self.mode = mode
        self.customer = customer
        self.customer_email = customer_email
        self.customer_details = None
        self.success_url = success_url
        self.cancel_url = cancel_url
        self.client_reference_id = client_reference_id
        self.metadata = metadata or {}
        self.currency = checked[0]["plan"].currency
        self.amount_subtotal = self.amount_total = sum(
            c["plan"].amount * c["quantity"] for c in checked if c["plan"].usage_type == "licensed")
        self.status = "open"
        self.payment_status = "unpaid"
        self.subscription = None
        self.invoice = None
        self.payment_intent = None
        self.payment_method_types = payment_method_types or ["card"]
        self.ui_mode = "hosted"
        self.locale = locale
        self.expires_at = try_convert_to_int(expires_at) or self.created + 24 * 3600
        self.url = f"{_origin}/_emulator/checkout/{self.id}"
        self._line_items = [{"price": c["price"], "quantity": c["quantity"]} for c in checked]
        self._subscription_metadata = (subscription_data or {}).get("metadata") or {}

    @classmethod
    def _api_list_line_items(cls, id, limit=None, starting_after=None, **kwargs):
        session = cls._api_retrieve(id)
        listing = List(f"/v1/checkout/sessions/{id}/line_items", limit=limit, starting_after=starting_after)
        for n, item in enumerate(session._line_items):
            plan = Plan._api_retrieve(item["price"])
            amount = plan.amount * (item["quantity"] or 0)
            listing._list.append(Exported({
                "id": f"li_{session.id[8:22]}{n}", "object": "item", "currency": plan.currency,
                "description": plan.name, "price": store["price:" + plan.id]._export(), "quantity": item["quantity"],
                "amount_subtotal": amount, "amount_total": amount, "amount_discount": 0, "amount_tax": 0,
                "discounts": [], "taxes": []}))
        return listing

    def _export(self, expand=None):
        # line_items and total_details are not stored objects, so localstripe's expansion cannot reach them.
        expand = list(expand or [])
        line_items = any(path.split(".")[0] == "line_items" for path in expand)
        breakdown = "total_details.breakdown" in expand
        exported = super()._export(expand=[path for path in expand
                                           if path.split(".")[0] not in ("line_items", "total_details")])
        exported["total_details"] = {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0}
        if breakdown:
            exported["total_details"]["breakdown"] = {"discounts": [], "taxes": []}
        if line_items:
            exported["line_items"] = CheckoutSession._api_list_line_items(self.id, limit=100)._export()
        return exported

    @classmethod
    def _api_expire(cls, id, **kwargs):
        session = cls._api_retrieve(id)
        if session.status != "open":
            raise invalid("Only open sessions can be expired.")
        session.status = "expired"
        emit("checkout.session.expired", session)
        return session

    @classmethod
    def _api_complete(cls, id, card_number="4242424242424242", **kwargs):
        """The paying customer: enter a card, pay the first invoice, come back to success_url."""
        reject_unknown(kwargs)
        session = cls._api_retrieve(id)
        if session.status != "open":
            raise invalid(f"This Checkout Session is {session.status}.")
        customer = (Customer._api_retrieve(session.customer) if session.customer
                    else Customer(email=session.customer_email or "customer@example.com"))
        card = PaymentMethod(type="card", card={"number": str(card_number), "exp_month": 12,
                                                "exp_year": datetime.now(UTC).year + 5, "cvc": "123"})
        PaymentMethod._api_attach(card.id, customer=customer.id)
        customer.invoice_settings["default_payment_method"] = card.id
        subscription = Subscription(customer=customer.id, items=list(session._line_items),
                                    metadata=dict(session._subscription_metadata),
                                    default_payment_method=card.id, payment_behavior="error_if_incomplete")
        session.customer = customer.id
        session.customer_details = {"email": customer.email, "name": customer.name, "address": None,
                                    "phone": None, "tax_exempt": "none", "tax_ids": []}
        session.subscription = subscription.id
        session.invoice = subscription.latest_invoice
        session.status = "complete"
        session.payment_status = "paid"
        emit("checkout.session.completed", session)
        return session


class PortalSession(StripeObject):
    object = "billing_portal.session"
    _id_prefix = "bps_"

    def __init__(self, customer=None, return_url=None, configuration=None, locale=None, flow_data=None,
                 on_behalf_of=None, _origin="http://127.0.0.1:8420", **kwargs):
        reject_unknown(kwargs)
        if not isinstance(customer, str):
            raise invalid("Missing required param: customer.", "customer")
        Customer._api_retrieve(customer)
        super().__init__()
        self.customer = customer
        self.return_url = return_url
        self.configuration = configuration or "bpc_emulated"
        self.locale = locale
        self.flow = None
        self.on_behalf_of = on_behalf_of
        self.url = f"{_origin}/_emulator/billing_portal/{self.id}"

    @classmethod
    def _api_retrieve(cls, id):
        raise UserError(404, "Customer portal sessions cannot be retrieved")
