"""The account (dj-stripe's sync needs GET /v1/account) and Prices (the Prices API, with metered recurring usage)."""
from decimal import Decimal, InvalidOperation

from localstripe.errors import UserError
from localstripe.resources import (
    Plan,
    Product,
    StripeObject,
    store,
    try_convert_to_bool,
    try_convert_to_int,
)

from billing.stripe_emulator.resources.common import INTERVALS, emit, invalid, reject_unknown
from billing.stripe_emulator.resources.meters import Meter


class Account(StripeObject):
    object = "account"
    _id_prefix = "acct_"

    def __init__(self):
        super().__init__()
        self.type = "standard"
        self.business_type = "company"
        self.business_profile = {"name": "Hearth (offline Stripe)", "url": None, "support_email": None}
        self.charges_enabled = True
        self.payouts_enabled = True
        self.details_submitted = True
        self.country = "US"
        self.default_currency = "usd"
        self.email = "billing@hearth.invalid"
        self.capabilities = {"card_payments": "active"}
        self.metadata = {}
        self.settings = {"dashboard": {"display_name": "Hearth (offline Stripe)", "timezone": "Etc/UTC"},
                         "branding": {"icon": None, "logo": None, "primary_color": None, "secondary_color": None}}
        self.requirements = {"currently_due": [], "eventually_due": [], "past_due": [], "disabled_reason": None}
        self.tos_acceptance = {"date": None}

    @classmethod
    def _the_account(cls):
        """The one account every secret key belongs to, made on first use."""
        for key, value in list(store.items()):
            if key.startswith("account:"):
                return value
        return cls()

    @classmethod
    def _api_retrieve_own(cls, **kwargs):
        return cls._the_account()

    @classmethod
    def _api_retrieve(cls, id):
        account = cls._the_account()
        if id != account.id:
            raise UserError(404, f"No such account: '{id}'", {"code": "resource_missing", "param": "account"})
        return account

    @classmethod
    def _api_create(cls, **data):
        raise UserError(405, "Connect accounts are not emulated")


class Price(StripeObject):
    """A price; a recurring one is also a localstripe Plan with the same id, as Stripe keeps them."""

    object = "price"
    _id_prefix = "price_"

    def __init__(self, currency=None, unit_amount=None, unit_amount_decimal=None, product=None, product_data=None,
                 recurring=None, lookup_key=None, transfer_lookup_key=False, nickname=None, metadata=None,
                 active=True, tax_behavior=None, billing_scheme="per_unit", **kwargs):
        reject_unknown(kwargs)
        active = try_convert_to_bool(active)
        transfer_lookup_key = try_convert_to_bool(transfer_lookup_key)
        if unit_amount is None and unit_amount_decimal is not None:
            try:
                decimal_amount = Decimal(str(unit_amount_decimal))
            except InvalidOperation:
                raise invalid("Invalid decimal: unit_amount_decimal", "unit_amount_decimal")
            if decimal_amount != decimal_amount.to_integral_value():
                raise invalid("Fractional unit_amount_decimal is not emulated", "unit_amount_decimal")
            unit_amount = int(decimal_amount)
        unit_amount = try_convert_to_int(unit_amount)
        if not isinstance(currency, str) or not currency:
            raise invalid("Missing required param: currency.", "currency")
        if not isinstance(unit_amount, int) or unit_amount < 0:
            raise invalid("Missing required param: unit_amount.", "unit_amount")
        if billing_scheme != "per_unit":
            raise invalid("Only per_unit prices are emulated", "billing_scheme")
        if (product is None) == (product_data is None):
            raise invalid("Exactly one of product or product_data is required.", "product")
        if product is not None:
            Product._api_retrieve(product)
        elif not isinstance(product_data, dict) or not product_data.get("name"):
            raise invalid("Missing required param: product_data[name].", "product_data[name]")
        if lookup_key is not None and not isinstance(lookup_key, str):
            raise invalid("Invalid string: lookup_key", "lookup_key")
        holder = Price._by_lookup_key(lookup_key)
        if holder is not None and not transfer_lookup_key:
            raise invalid(f"A price ({holder.id}) already uses that lookup key.", "lookup_key")
        if recurring is not None:
            recurring = self._checked_recurring(recurring)

        if product_data is not None:
            product = Product(name=product_data["name"], metadata=product_data.get("metadata")).id
        # All exceptions must be raised before this point.
        super().__init__()
        if holder is not None:
            holder.lookup_key = None
        self.active = active
        self.billing_scheme = billing_scheme
        self.currency = currency.lower()
        self.custom_unit_amount = None
        self.lookup_key = lookup_key
        self.metadata = metadata or {}
        self.nickname = nickname
        self.product = product
        self.recurring = recurring
        self.tax_behavior = tax_behavior or "unspecified"
        self.tiers_mode = None
        self.transform_quantity = None
        self.type = "recurring" if recurring else "one_time"
        self.unit_amount = unit_amount
        self.unit_amount_decimal = str(unit_amount)
        if recurring:
            Plan(id=self.id, product=product, amount=unit_amount, currency=self.currency,
                 interval=recurring["interval"], interval_count=recurring["interval_count"],
                 usage_type=recurring["usage_type"], nickname=nickname, metadata=dict(self.metadata), active=active)
        emit("price.created", self)

    @staticmethod
    def _checked_recurring(recurring):
        if not isinstance(recurring, dict) or recurring.get("interval") not in INTERVALS:
            raise invalid("recurring[interval] must be one of day, week, month or year.", "recurring[interval]")
        interval_count = try_convert_to_int(recurring.get("interval_count", 1))
        usage_type = recurring.get("usage_type", "licensed")
        if not isinstance(interval_count, int) or interval_count < 1:
            raise invalid("Invalid integer: recurring[interval_count]", "recurring[interval_count]")
        if usage_type not in ("licensed", "metered"):
            raise invalid("recurring[usage_type] must be licensed or metered.", "recurring[usage_type]")
        meter = recurring.get("meter")
        if meter is not None:
            if usage_type != "metered":
                raise invalid("A meter can only back a metered price.", "recurring[meter]")
            Meter._api_retrieve(meter)
        unknown = set(recurring) - {"interval", "interval_count", "usage_type", "meter", "aggregate_usage"}
        if unknown:
            raise invalid(f"Received unknown parameter: recurring[{sorted(unknown)[0]}]")
        return {"interval": recurring["interval"], "interval_count": interval_count, "usage_type": usage_type,
                "meter": meter, "aggregate_usage": None, "trial_period_days": None}

    @classmethod
    def _by_lookup_key(cls, lookup_key):
        if lookup_key is None:
            return None
        for key, value in store.items():
            if key.startswith("price:") and value.lookup_key == lookup_key:
                return value
        return None

    def _update(self, active=None, lookup_key=None, transfer_lookup_key=False, metadata=None, nickname=None,
                tax_behavior=None, **kwargs):
        reject_unknown(kwargs)
        transfer_lookup_key = try_convert_to_bool(transfer_lookup_key)
        if lookup_key is not None:
            holder = Price._by_lookup_key(lookup_key)
            if holder is not None and holder is not self:
                if not transfer_lookup_key:
                    raise invalid(f"A price ({holder.id}) already uses that lookup key.", "lookup_key")
                holder.lookup_key = None
            self.lookup_key = lookup_key or None
        if active is not None:
            self.active = try_convert_to_bool(active)
        if nickname is not None:
            self.nickname = nickname
        if tax_behavior is not None:
            self.tax_behavior = tax_behavior
        if metadata:
            self.metadata.update(metadata)
        if self.recurring:
            plan = Plan._api_retrieve(self.id)
            plan.active, plan.nickname, plan.metadata = self.active, self.nickname, dict(self.metadata)
        emit("price.updated", self)

    @classmethod
    def _api_delete(cls, id):
        raise UserError(405, "Prices cannot be deleted; set active=false")

    @classmethod
    def _api_list_all(cls, url, active=None, currency=None, product=None, type=None, lookup_keys=None,
                      recurring=None, limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        listing = super()._api_list_all(url, limit=limit, starting_after=starting_after)
        if active is not None:
            wanted = try_convert_to_bool(active)
            listing._list = [p for p in listing._list if p.active == wanted]
        if currency is not None:
            listing._list = [p for p in listing._list if p.currency == currency.lower()]
        if product is not None:
            listing._list = [p for p in listing._list if p.product == product]
        if type is not None:
            listing._list = [p for p in listing._list if p.type == type]
        if lookup_keys is not None:
            keys = lookup_keys if isinstance(lookup_keys, list) else [lookup_keys]
            listing._list = [p for p in listing._list if p.lookup_key in keys]
        if isinstance(recurring, dict):
            for field in ("interval", "usage_type", "meter"):
                if field in recurring:
                    listing._list = [p for p in listing._list
                                     if p.recurring and p.recurring.get(field) == recurring[field]]
        return listing
