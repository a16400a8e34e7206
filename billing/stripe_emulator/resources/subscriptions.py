"""Subscriptions and their items on Prices, with Stripe's proration, period changes and status changes."""
import time
from decimal import Decimal

from localstripe import resources as ls
from localstripe.errors import UserError
from localstripe.resources import (
    Customer,
    Invoice,
    InvoiceItem,
    List,
    PaymentMethod,
    Plan,
    StripeObject,
    store,
    try_convert_to_bool,
    try_convert_to_int,
)

from billing.stripe_emulator.resources.common import emit, invalid, money, period_end_after, reject_unknown
from billing.stripe_emulator.resources.meters import Meter


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
