"""The Stripe objects Hearth uses that localstripe lacks or gets wrong, kept in localstripe's store beside its own."""
import secrets
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from dateutil.relativedelta import relativedelta
from localstripe import resources as ls
from localstripe.errors import UserError
from localstripe.resources import (
    Customer,
    Event,
    Invoice,
    InvoiceItem,
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
from localstripe.webhooks import _webhooks, register_webhook, schedule_webhook

# The API version the pinned stripe SDK (15.6.2) sends; events carry it as Stripe's do.
API_VERSION = "2026-08-26.dahlia"
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
INTERVALS = {"day": relativedelta(days=1), "week": relativedelta(weeks=1),
             "month": relativedelta(months=1), "year": relativedelta(years=1)}


def _expandable(obj, path):
    """Whether `path` names something `obj` has: Stripe ignores an expansion of a field that is absent or null
    (dj-stripe asks for `discounts`, `currency_options`, … on every retrieve), where localstripe answers 400."""
    if isinstance(obj, list):
        return all(_expandable(item, path) for item in obj)
    key, _, rest = path.partition(".")
    if not isinstance(obj, dict) or obj.get(key) is None:
        return False
    return not rest or isinstance(obj[key], str) or _expandable(obj[key], rest)


_localstripe_export = StripeObject._export


def _export(self, expand=None):
    if expand and isinstance(expand, list) and all(isinstance(path, str) for path in expand):
        plain = _localstripe_export(self)
        expand = [path for path in expand if _expandable(plain, path)]
    return _localstripe_export(self, expand=expand)


StripeObject._export = _export


def invalid(message, param=None, code=None):
    """Stripe's shape for a 400: an invalid_request_error naming the parameter."""
    contents = {}
    if param:
        contents["param"] = param
    if code:
        contents["code"] = code
    return UserError(400, message, contents)


def reject_unknown(kwargs):
    if kwargs:
        name = sorted(kwargs)[0]
        raise invalid(f"Received unknown parameter: {name} (or the offline Stripe does not emulate it)", param=name)


def emit(event_type, obj, previous_attributes=None):
    """Record an event and send it, signed, to every webhook endpoint that wants it."""
    event = Event(event_type, obj)
    event.api_version = API_VERSION
    event.pending_webhooks = len(_webhooks)
    event.request = {"id": None, "idempotency_key": None}
    if previous_attributes:
        event.data["previous_attributes"] = previous_attributes
    schedule_webhook(event)
    return event


def period_end_after(start, interval, interval_count=1):
    moment = datetime.fromtimestamp(start, UTC)
    for _ in range(interval_count):
        moment += INTERVALS[interval]
    return int(moment.timestamp())


def money(amount):
    """Minor units from a Decimal, rounded as Stripe rounds prorations (half up)."""
    return int(Decimal(amount).quantize(Decimal(1), rounding=ROUND_HALF_UP))


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


class SubscriptionItem(ls.SubscriptionItem):
    """An item that names its price, takes its period from its subscription and bills metered usage in arrears."""

    def __init__(self, subscription=None, price=None, quantity=None, metadata=None, **kwargs):
        plan = Plan._api_retrieve(price)
        super().__init__(subscription=subscription, plan=price,
                         quantity=1 if plan.usage_type == "metered" else quantity,
                         metadata=metadata, **kwargs)
        if plan.usage_type == "metered":
            # Stripe omits the quantity of a metered item.
            self.quantity = None
        self.subscription = subscription
        self.discounts = []
        self.billing_thresholds = None

    @property
    def price(self):
        price = store.get("price:" + self.plan.id)
        return price._export() if price is not None else None

    @property
    def current_period_start(self):
        return self._current_period()["start"]

    @property
    def current_period_end(self):
        return self._current_period()["end"]

    def _current_period(self):
        if self._subscription and ("subscription:" + self._subscription) in store:
            sub = store["subscription:" + self._subscription]
            return {"start": sub._period_start, "end": sub._period_end}
        return super()._current_period()

    def _calculate_amount(self):
        if self.plan.usage_type == "metered":
            return 0
        return self.plan.amount * self.quantity

    # The /v1/subscription_items routes change the item through its subscription, so prorations and events follow.
    @classmethod
    def _api_create(cls, subscription=None, price=None, plan=None, quantity=None, metadata=None,
                    proration_behavior="create_prorations", proration_date=None, **kwargs):
        reject_unknown(kwargs)
        if not isinstance(subscription, str):
            raise invalid("Missing required param: subscription.", "subscription")
        sub = Subscription._api_retrieve(subscription)
        item = {"price": price or plan, "metadata": metadata}
        if quantity is not None:
            item["quantity"] = quantity
        sub._update(items=[item], proration_behavior=proration_behavior, proration_date=proration_date)
        return sub.items._list[-1]

    @classmethod
    def _api_update(cls, id, price=None, plan=None, quantity=None, metadata=None,
                    proration_behavior="create_prorations", proration_date=None, **kwargs):
        reject_unknown(kwargs)
        item = cls._api_retrieve(id)
        change = {"id": id, "metadata": metadata}
        if price or plan:
            change["price"] = price or plan
        if quantity is not None:
            change["quantity"] = quantity
        elif item.quantity is not None:
            change["quantity"] = item.quantity
        Subscription._api_retrieve(item._subscription)._update(
            items=[change], proration_behavior=proration_behavior, proration_date=proration_date)
        return cls._api_retrieve(id)

    @classmethod
    def _api_delete(cls, id, proration_behavior="create_prorations", **kwargs):
        item = cls._api_retrieve(id)
        Subscription._api_retrieve(item._subscription)._update(
            items=[{"id": id, "deleted": True}], proration_behavior=proration_behavior)
        return ls.DeletedObject(id, cls.object)

    @classmethod
    def _api_list_all(cls, url, subscription=None, limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        if not isinstance(subscription, str):
            raise invalid("Missing required param: subscription.", "subscription")
        listing = List(url, limit=limit, starting_after=starting_after)
        listing._list = list(Subscription._api_retrieve(subscription).items._list)
        return listing


def item_input(raw, param):
    """One item of a subscription or Checkout request, checked: {price, quantity, metadata}."""
    if not isinstance(raw, dict):
        raise invalid(f"Invalid object: {param}", param)
    price_id = raw.get("price") or raw.get("plan")
    if not isinstance(price_id, str):
        raise invalid(f"Missing required param: {param}[price].", f"{param}[price]")
    price = store.get("price:" + price_id)
    plan = store.get("plan:" + price_id)
    if plan is None:
        if price is not None:
            raise invalid(f"The price specified is set to `type=one_time` but {param} expects recurring prices.",
                          f"{param}[price]")
        raise invalid(f"No such price: '{price_id}'", f"{param}[price]", code="resource_missing")
    if price is not None and not price.active:
        raise invalid(f"The price specified is inactive: '{price_id}'", f"{param}[price]")
    quantity = try_convert_to_int(raw.get("quantity"))
    if plan.usage_type == "metered":
        if quantity is not None:
            raise invalid("Quantity should not be specified where usage_type is `metered`.", f"{param}[quantity]")
    elif quantity is None:
        quantity = 1
    elif not isinstance(quantity, int) or quantity < 1:
        raise invalid(f"{param}[quantity] must be a whole number of at least 1 (0 is not emulated).",
                      f"{param}[quantity]")
    return {"price": price_id, "quantity": quantity, "metadata": raw.get("metadata"), "plan": plan}


class Subscription(ls.Subscription):
    """A subscription of several priced items with a moving period, where localstripe has one plan and a fixed one."""

    def __init__(self, customer=None, items=None, metadata=None, default_payment_method=None, description=None,
                 proration_behavior=None, payment_behavior="allow_incomplete", cancel_at_period_end=False,
                 collection_method="charge_automatically", off_session=None, **kwargs):
        reject_unknown(kwargs)
        if not isinstance(customer, str):
            raise invalid("Missing required param: customer.", "customer")
        if not isinstance(items, list) or not items:
            raise invalid("Missing required param: items.", "items")
        checked = [item_input(raw, f"items[{n}]") for n, raw in enumerate(items)]
        first = checked[0]["plan"]
        for item in checked[1:]:
            if (item["plan"].interval, item["plan"].interval_count) != (first.interval, first.interval_count):
                raise invalid("All prices on a subscription must have the same `recurring.interval` and "
                              "`recurring.interval_count`.", "items")
            if item["plan"].currency != first.currency:
                raise invalid("All prices on a subscription must have the same currency.", "items")
        if payment_behavior not in ("allow_incomplete", "default_incomplete", "error_if_incomplete",
                                    "pending_if_incomplete"):
            raise invalid("Invalid payment_behavior", "payment_behavior")
        buyer = Customer._api_retrieve(customer)
        if default_payment_method is not None:
            PaymentMethod._api_retrieve(default_payment_method)
        first_amount = sum(c["plan"].amount * c["quantity"] for c in checked if c["plan"].usage_type == "licensed")
        if (first_amount > 0 and payment_behavior != "default_incomplete"
                and buyer._get_default_payment_method_or_source() is None):
            raise invalid("This customer has no attached payment source or default payment method.",
                          code="resource_missing")

        # All exceptions must be raised before this point.
        StripeObject.__init__(self)
        now = int(time.time())
        self.customer = customer
        self.metadata = metadata or {}
        self.description = description
        self.default_payment_method = default_payment_method
        self.collection_method = collection_method
        self.currency = first.currency
        self.tax_percent = None
        self.default_tax_rates = []
        self.application_fee_percent = None
        self.cancel_at_period_end = try_convert_to_bool(cancel_at_period_end)
        self.cancel_at = None
        self.canceled_at = None
        self.cancellation_details = {"comment": None, "feedback": None, "reason": None}
        self.discount = None
        self.discounts = []
        self.ended_at = None
        self.status = "incomplete"
        self.trial_end = None
        self.trial_start = None
        self.trial_period_days = None
        self.trial_from_plan = False
        self.latest_invoice = None
        self.pause_collection = None
        self.pending_update = None
        self.schedule = None
        self.start_date = now
        self.billing_cycle_anchor = now
        self._period_start = now
        self._period_end = period_end_after(now, first.interval, first.interval_count)
        self._enable_incomplete_payments = payment_behavior != "error_if_incomplete"
        self.items = List("/v1/subscription_items?subscription=" + self.id)
        for item in checked:
            self.items._list.append(SubscriptionItem(subscription=self.id, price=item["price"],
                                                     quantity=item["quantity"], metadata=item["metadata"]))
        self.quantity = self.items._list[0].quantity
        self._creating = True
        invoice = Invoice(customer=customer, subscription=self.id, items=list(self.items._list), date=now)
        invoice.billing_reason = "subscription_create"
        invoice._finalize()
        if invoice.status != "paid" and payment_behavior != "default_incomplete" and not self._charge(invoice):
            if payment_behavior == "error_if_incomplete":
                for item in self.items._list:
                    del store["subscription_item:" + item.id]
                del store["subscription:" + self.id]
                declined = UserError(402, "Your card was declined.", {"code": "card_declined"})
                declined.body["error"]["type"] = "card_error"
                raise declined
            emit("invoice.payment_failed", invoice)
        if invoice.status == "paid":
            self.status = "active"
            emit("invoice.paid", invoice)
        self._creating = False
        emit("customer.subscription.created", self)

    @property
    def current_period_start(self):
        return self._period_start

    @property
    def current_period_end(self):
        return self._period_end

    @staticmethod
    def _charge(invoice):
        """Pay an open invoice with the customer's default card; True if it was paid."""
        try:
            Invoice._api_pay_invoice(invoice.id)
        except UserError:
            # No card on file: the invoice stays open, as Stripe leaves it.
            return False
        # localstripe reports a declined charge to nobody when it pays an invoice; the caller acts on the status.
        return invoice.status == "paid"

    def _on_initial_payment_success(self, invoice):
        # localstripe calls this for every paid invoice of the subscription, not only the first.
        if getattr(self, "_creating", False):
            return
        emit("invoice.paid", invoice)
        if self.status != "active":
            previous = self.status
            self.status = "active"
            emit("customer.subscription.updated", self, {"status": previous})

    def _on_recurring_payment_failure(self, invoice):
        previous = self.status
        self.status = "past_due"
        if previous != "past_due":
            emit("customer.subscription.updated", self, {"status": previous})

    def _snapshot(self):
        return {"items": self.items._export(), "status": self.status,
                "cancel_at_period_end": self.cancel_at_period_end, "cancel_at": self.cancel_at,
                "metadata": dict(self.metadata), "current_period_start": self._period_start,
                "current_period_end": self._period_end}

    def _update(self, items=None, proration_behavior="create_prorations", proration_date=None,
                cancel_at_period_end=None, cancel_at=None, metadata=None, default_payment_method=None,
                description=None, payment_behavior=None, billing_cycle_anchor=None, off_session=None, **kwargs):
        reject_unknown(kwargs)
        if self.status in ("canceled", "incomplete_expired"):
            raise invalid("A canceled subscription can only update its cancellation_details and metadata.")
        if proration_behavior not in ("create_prorations", "none", "always_invoice"):
            raise invalid("Invalid proration_behavior", "proration_behavior")
        if billing_cycle_anchor not in (None, "unchanged"):
            raise invalid("Only billing_cycle_anchor=unchanged is emulated", "billing_cycle_anchor")
        changes = self._checked_item_changes(items) if items is not None else []
        if default_payment_method:
            PaymentMethod._api_retrieve(default_payment_method)
        cancel_at = try_convert_to_int(cancel_at)

        # All exceptions must be raised before this point.
        before = self._snapshot()
        now = try_convert_to_int(proration_date) or int(time.time())
        fraction = Decimal(max(0, self._period_end - now)) / Decimal(self._period_end - self._period_start)
        for existing, change in changes:
            self._apply_item_change(existing, change, fraction, proration_behavior)
        self.quantity = self.items._list[0].quantity if self.items._list else None
        if cancel_at_period_end is not None:
            self.cancel_at_period_end = try_convert_to_bool(cancel_at_period_end)
            # Stripe records when the cancellation was asked for and when it will happen.
            self.canceled_at = int(time.time()) if self.cancel_at_period_end else None
            self.cancel_at = self._period_end if self.cancel_at_period_end else None
        if cancel_at is not None:
            self.cancel_at = cancel_at or None
        if metadata:
            self.metadata.update(metadata)
        if default_payment_method:
            self.default_payment_method = default_payment_method
        if description is not None:
            self.description = description
        if proration_behavior == "always_invoice" and changes:
            self._invoice_pending_items()
        after = self._snapshot()
        previous = {key: value for key, value in before.items() if after[key] != value}
        if previous:
            emit("customer.subscription.updated", self, previous)

    def _checked_item_changes(self, items):
        if not isinstance(items, list):
            raise invalid("Invalid array: items", "items")
        changes = []
        for n, raw in enumerate(items):
            param = f"items[{n}]"
            if not isinstance(raw, dict):
                raise invalid(f"Invalid object: {param}", param)
            existing = None
            if raw.get("id"):
                existing = next((si for si in self.items._list if si.id == raw["id"]), None)
                if existing is None:
                    raise invalid(f"No such subscription item: '{raw['id']}'", f"{param}[id]",
                                  code="resource_missing")
            if try_convert_to_bool(raw.get("deleted", False)) is True:
                if existing is None:
                    raise invalid("Deleting an item needs its id.", f"{param}[id]")
                changes.append((existing, None))
                continue
            if existing is not None and not (raw.get("price") or raw.get("plan")):
                raw = dict(raw, price=existing.plan.id)
                if existing.plan.usage_type == "metered":
                    raw.pop("quantity", None)
            new_plan = store.get("plan:" + str(raw.get("price") or raw.get("plan")))
            if (existing is not None and raw.get("quantity") is None and existing.quantity
                    and new_plan is not None and new_plan.usage_type == "licensed"):
                # Stripe keeps an item's quantity when only its price changes.
                raw = dict(raw, quantity=existing.quantity)
            changes.append((existing, item_input(raw, param)))
        remaining = {si.id for si in self.items._list} - {e.id for e, c in changes if c is None and e is not None}
        if not remaining and not any(c is not None for _, c in changes):
            raise invalid("A subscription needs at least one item.", "items")
        return changes

    def _apply_item_change(self, existing, change, fraction, proration_behavior):
        prorate = proration_behavior != "none"
        if existing is not None and prorate:
            self._prorate(existing.plan, existing.quantity, -fraction, "Unused time on")
        if existing is not None:
            self.items._list.remove(existing)
        if change is None:
            del store["subscription_item:" + existing.id]
            return
        item = SubscriptionItem(subscription=self.id, price=change["price"], quantity=change["quantity"],
                                metadata=change["metadata"])
        if existing is not None:
            # Stripe keeps the item's id when its price or quantity changes.
            del store["subscription_item:" + item.id]
            item.id = existing.id
            store["subscription_item:" + item.id] = item
        self.items._list.append(item)
        if prorate:
            self._prorate(item.plan, item.quantity, fraction, "Remaining time on")

    def _prorate(self, plan, quantity, fraction, words):
        if plan.usage_type == "metered" or not quantity:
            return
        amount = money(Decimal(plan.amount * quantity) * fraction)
        if amount:
            InvoiceItem(amount=amount, currency=plan.currency, customer=self.customer, subscription=self.id,
                        plan=plan.id, proration=True, description=f"{words} {plan.name}",
                        period_start=self._period_start, period_end=self._period_end)

    def _invoice_pending_items(self, items=()):
        """Invoice what is pending for this customer (and `items`) and try to pay it at once, as Stripe's cycle does."""
        pending = [ii for ii in InvoiceItem._api_list_all(None, customer=self.customer, limit=99)._list
                   if ii.invoice is None]
        lines = list(items) + pending
        if not lines:
            return None
        invoice = Invoice(customer=self.customer, subscription=self.id, items=list(items),
                          date=int(time.time()))
        invoice.billing_reason = "subscription_cycle" if items else "subscription_update"
        invoice._finalize()
        self.latest_invoice = invoice.id
        if invoice.status == "paid":
            invoice.status_transitions["paid_at"] = int(time.time())
            emit("invoice.paid", invoice)
        elif not self._charge(invoice):
            emit("invoice.payment_failed", invoice)
            self._on_recurring_payment_failure(invoice)
        return invoice

    @classmethod
    def _api_update(cls, id, **data):
        obj = cls._api_retrieve(id)
        obj._update(**data)
        return obj

    @classmethod
    def _api_delete(cls, id, **kwargs):
        obj = cls._api_retrieve(id)
        if obj.status == "canceled":
            raise invalid(f"No such subscription: '{id}'", code="resource_missing")
        return obj._end()

    def _end(self):
        now = int(time.time())
        self.status = "canceled"
        self.ended_at = now
        self.canceled_at = self.canceled_at or now
        emit("customer.subscription.deleted", self)
        return self

    def _advance(self, fail_payment=False):
        """End the current period now (the emulator cannot move the clock) and start the next one."""
        if self.status == "canceled":
            raise invalid("The subscription is canceled.")
        # The ended period includes the current second, so usage reported just before the call is billed in it.
        now = int(time.time()) + 1
        if self.cancel_at_period_end or (self.cancel_at and self.cancel_at <= self._period_end):
            self._period_end = now
            return self._end()
        self._metered_usage(self._period_start, now)
        before = self._snapshot()
        first = self.items._list[0].plan
        self._period_start, self._period_end = now, period_end_after(now, first.interval, first.interval_count)
        licensed = [si for si in self.items._list if si.plan.usage_type == "licensed"]
        if fail_payment:
            invoice = Invoice(customer=self.customer, subscription=self.id, items=licensed, date=now)
            invoice.billing_reason = "subscription_cycle"
            invoice._finalize()
            self.latest_invoice = invoice.id
            emit("invoice.payment_failed", invoice)
            self.status = "past_due"
        else:
            self._invoice_pending_items(items=licensed)
        after = self._snapshot()
        emit("customer.subscription.updated", self,
             {key: value for key, value in before.items() if after[key] != value})
        return self

    def _metered_usage(self, start, end):
        """Invoice items for the metered items' usage in [start, end), billed in arrears; pending until invoiced."""
        lines = []
        for si in self.items._list:
            price = store.get("price:" + si.plan.id)
            if si.plan.usage_type != "metered" or price is None or not price.recurring.get("meter"):
                continue
            meter = Meter._api_retrieve(price.recurring["meter"])
            quantity = meter._aggregate(self.customer, start, end)
            amount = money(quantity * si.plan.amount)
            lines.append(InvoiceItem(amount=amount, currency=si.plan.currency, customer=self.customer,
                                     subscription=self.id, plan=si.plan.id, period_start=start,
                                     period_end=max(end, start + 1),
                                     description=f"{quantity} × {si.plan.name} (usage)"))
        return lines

    @classmethod
    def _api_list_all(cls, url, customer=None, status=None, price=None, limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        listing = super()._api_list_all(url, customer=customer, status=status, limit=limit,
                                        starting_after=starting_after)
        if price is not None:
            listing._list = [s for s in listing._list if any(si.plan.id == price for si in s.items._list)]
        return listing


def json_number(value):
    """A Decimal as Stripe writes the number in JSON: an integer when whole."""
    return int(value) if value == value.to_integral_value() else float(value)


def invoice_preview(customer=None, subscription=None, subscription_details=None, **kwargs):
    """The next invoice of a subscription, never stored: pending prorations, the next period's licensed items and
    the metered usage so far. localstripe's own preview handles one plan and marks pending items as invoiced."""
    reject_unknown(kwargs)
    if subscription_details:
        raise invalid("Previewing a change (subscription_details) is not emulated.", "subscription_details")
    if not isinstance(subscription, str):
        raise invalid("Missing required param: subscription.", "subscription")
    sub = Subscription._api_retrieve(subscription)
    if customer is not None and customer != sub.customer:
        raise invalid(f"No such subscription: '{subscription}'", "subscription", code="resource_missing")
    if sub.status == "canceled":
        raise invalid("No upcoming invoices for a canceled subscription.", code="invoice_upcoming_none")
    lines = []

    def line(amount, plan, description, start, end, quantity, proration=False):
        price = store.get("price:" + plan.id)
        lines.append({"id": f"il_tmp_{random_id(14)}", "object": "line_item", "amount": amount,
                      "currency": plan.currency, "description": description, "proration": proration,
                      "period": {"start": start, "end": end}, "quantity": quantity, "livemode": False,
                      "price": price._export() if price is not None else None, "discountable": True,
                      "pricing": {"type": "price_details", "unit_amount_decimal": str(plan.amount),
                                  "price_details": {"price": plan.id, "product": plan.product}},
                      "subscription": sub.id, "metadata": {}})

    for ii in InvoiceItem._api_list_all(None, customer=sub.customer, limit=99)._list:
        if ii.invoice is None and ii.plan is not None:
            line(ii.amount, ii.plan, ii.description, ii.period["start"], ii.period["end"], 1, ii.proration)
    first = sub.items._list[0].plan
    next_end = period_end_after(sub._period_end, first.interval, first.interval_count)
    for si in sub.items._list:
        if si.plan.usage_type == "licensed":
            line(si.plan.amount * si.quantity, si.plan, f"{si.quantity} × {si.plan.name}", sub._period_end, next_end,
                 si.quantity)
            continue
        price = store.get("price:" + si.plan.id)
        if price is not None and price.recurring.get("meter"):
            usage = Meter._api_retrieve(price.recurring["meter"])._aggregate(sub.customer, sub._period_start,
                                                                            sub._period_end)
            line(money(usage * si.plan.amount), si.plan, f"{usage} × {si.plan.name} (usage)",
                 sub._period_start, sub._period_end, json_number(usage))
    total = sum(entry["amount"] for entry in lines)
    return Exported({
        "id": f"upcoming_in_{random_id(14)}", "object": "invoice", "customer": sub.customer, "subscription": sub.id,
        "status": "draft", "currency": sub.currency, "created": int(time.time()), "livemode": False,
        "period_start": sub._period_start, "period_end": sub._period_end, "next_payment_attempt": sub._period_end,
        "billing_reason": "upcoming", "subtotal": total, "total": total, "amount_due": max(total, 0),
        "amount_paid": 0, "amount_remaining": max(total, 0), "total_tax_amounts": [], "discounts": [],
        "lines": {"object": "list", "data": lines, "has_more": False, "total_count": len(lines),
                  "url": f"/v1/invoices/upcoming/lines?subscription={sub.id}"}})


class Meter(StripeObject):
    object = "billing.meter"
    _id_prefix = "mtr_"

    def __init__(self, display_name=None, event_name=None, default_aggregation=None, customer_mapping=None,
                 value_settings=None, event_time_window=None, **kwargs):
        reject_unknown(kwargs)
        if not isinstance(display_name, str) or not display_name:
            raise invalid("Missing required param: display_name.", "display_name")
        if not isinstance(event_name, str) or not event_name or len(event_name) > 100:
            raise invalid("Missing required param: event_name.", "event_name")
        if not isinstance(default_aggregation, dict) or default_aggregation.get("formula") not in (
                "sum", "count", "last"):
            raise invalid("default_aggregation[formula] must be sum, count or last.", "default_aggregation[formula]")
        customer_mapping = customer_mapping or {"event_payload_key": "stripe_customer_id", "type": "by_id"}
        value_settings = value_settings or {"event_payload_key": "value"}
        for key, value in list(store.items()):
            if key.startswith("billing.meter:") and value.event_name == event_name and value.status == "active":
                raise invalid(f"An active meter with event_name `{event_name}` already exists.", "event_name")
        super().__init__()
        self.display_name = display_name
        self.event_name = event_name
        self.default_aggregation = {"formula": default_aggregation["formula"]}
        self.customer_mapping = {"event_payload_key": customer_mapping.get("event_payload_key", "stripe_customer_id"),
                                 "type": "by_id"}
        self.value_settings = {"event_payload_key": value_settings.get("event_payload_key", "value")}
        self.event_time_window = event_time_window
        self.status = "active"
        self.status_transitions = {"deactivated_at": None}
        self.updated = self.created

    def _update(self, display_name=None, **kwargs):
        reject_unknown(kwargs)
        if display_name:
            self.display_name = display_name
            self.updated = int(time.time())

    @classmethod
    def _api_delete(cls, id):
        raise UserError(405, "Meters are deactivated, not deleted")

    @classmethod
    def _api_deactivate(cls, id, **kwargs):
        meter = cls._api_retrieve(id)
        meter.status = "inactive"
        meter.status_transitions["deactivated_at"] = meter.updated = int(time.time())
        return meter

    @classmethod
    def _api_reactivate(cls, id, **kwargs):
        meter = cls._api_retrieve(id)
        meter.status = "active"
        meter.updated = int(time.time())
        return meter

    @classmethod
    def _api_list_all(cls, url, status=None, limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        listing = super()._api_list_all(url, limit=limit, starting_after=starting_after)
        if status is not None:
            listing._list = [m for m in listing._list if m.status == status]
        return listing

    def _events(self, customer, start, end):
        key = self.customer_mapping["event_payload_key"]
        return sorted((e for k, e in store.items()
                       if k.startswith("billing.meter_event:") and e.event_name == self.event_name
                       and e.payload.get(key) == customer and start <= e.timestamp < end),
                      key=lambda e: (e.timestamp, e.created))

    def _aggregate(self, customer, start, end):
        events = self._events(customer, start, end)
        values = [Decimal(e.payload.get(self.value_settings["event_payload_key"], "0")) for e in events]
        formula = self.default_aggregation["formula"]
        if formula == "count":
            total = Decimal(len(events))
        elif formula == "last":
            total = values[-1] if values else Decimal(0)
        else:
            total = sum(values, Decimal(0))
        return total  # exact: decimal values (hours to the millionth) add up without float error

    @classmethod
    def _api_event_summaries(cls, id, customer=None, start_time=None, end_time=None, value_grouping_window=None,
                             limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        meter = cls._api_retrieve(id)
        if not isinstance(customer, str) or not customer:
            raise invalid("Missing required param: customer.", "customer")
        start, end = try_convert_to_int(start_time), try_convert_to_int(end_time)
        for name, value in (("start_time", start), ("end_time", end)):
            if not isinstance(value, int):
                raise invalid(f"Missing required param: {name}.", name)
            if value % 60:
                raise invalid(f"{name} must be aligned with minute boundaries.", name)
        if end <= start:
            raise invalid("end_time must be after start_time.", "end_time")
        step = {None: end - start, "hour": 3600, "day": 86400}.get(value_grouping_window)
        if step is None:
            raise invalid("value_grouping_window must be hour or day.", "value_grouping_window")
        listing = List(f"/v1/billing/meters/{id}/event_summaries", limit=limit, starting_after=starting_after)
        window = start
        while window < end:
            listing._list.append(MeterEventSummary(meter, customer, window, min(window + step, end)))
            window += step
        return listing


class MeterEventSummary:
    """Computed on request, never stored (Stripe aggregates events into summaries itself)."""

    object = "billing.meter_event_summary"

    def __init__(self, meter, customer, start, end):
        self.id = f"mtrusg_{meter.id}_{customer}_{start}_{end}"
        self.meter = meter.id
        self.start_time = start
        self.end_time = end
        self.aggregated_value = meter._aggregate(customer, start, end)

    def _export(self, expand=None):
        return {"id": self.id, "object": self.object, "aggregated_value": json_number(self.aggregated_value),
                "start_time": self.start_time, "end_time": self.end_time, "meter": self.meter, "livemode": False}


class MeterEvent:
    """A usage fact, stored under its identifier so a repeat within 24 hours is refused as Stripe refuses it."""

    object = "billing.meter_event"

    def __init__(self, event_name=None, payload=None, identifier=None, timestamp=None, **kwargs):
        reject_unknown(kwargs)
        now = int(time.time())
        if not isinstance(event_name, str) or not event_name or len(event_name) > 100:
            raise invalid("Missing required param: event_name.", "event_name")
        if not isinstance(payload, dict) or not payload:
            raise invalid("Missing required param: payload.", "payload")
        if identifier is None:
            identifier = secrets.token_hex(16)
        if not isinstance(identifier, str) or not identifier or len(identifier) > 100:
            raise invalid("Invalid string: identifier", "identifier")
        timestamp = now if timestamp is None else try_convert_to_int(timestamp)
        if not isinstance(timestamp, int) or timestamp < now - 35 * 86400 or timestamp > now + 300:
            raise invalid("The timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
                          "timestamp")
        for meter in self._meters(event_name):
            value = payload.get(meter.value_settings["event_payload_key"])
            try:
                finite = Decimal(str(value)).is_finite()
            except InvalidOperation:
                finite = False
            if not finite:
                raise invalid(f"payload[{meter.value_settings['event_payload_key']}] must be a number.",
                              f"payload[{meter.value_settings['event_payload_key']}]")
            if not payload.get(meter.customer_mapping["event_payload_key"]):
                raise invalid(f"Missing required param: payload[{meter.customer_mapping['event_payload_key']}].",
                              f"payload[{meter.customer_mapping['event_payload_key']}]")
        seen = store.get("billing.meter_event:" + identifier)
        if seen is not None and seen.created > now - IDENTIFIER_WINDOW_SECONDS:
            raise invalid(f"An event already exists with identifier {identifier}.", "identifier",
                          code="duplicate_meter_event")
        self.created = now
        self.event_name = event_name
        self.identifier = identifier
        self.payload = {key: str(value) for key, value in payload.items()}
        self.timestamp = timestamp
        store["billing.meter_event:" + identifier] = self

    @staticmethod
    def _meters(event_name):
        return [m for k, m in store.items()
                if k.startswith("billing.meter:") and m.event_name == event_name and m.status == "active"]

    @classmethod
    def _api_create(cls, **data):
        return cls(**data)

    def _export(self, expand=None):
        return {"object": self.object, "created": self.created, "event_name": self.event_name,
                "identifier": self.identifier, "livemode": False, "payload": dict(self.payload),
                "timestamp": self.timestamp}


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


class Exported:
    """A response body made once, for a field Stripe shows only at creation (a webhook endpoint's secret)."""

    def __init__(self, body):
        self.body = body

    def _export(self, expand=None):
        return self.body


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
