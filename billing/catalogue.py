"""The public paid plans as Stripe sells them: one product per plan, its monthly price (lookup key = the plan's slug)
and, where the plan has overage, a metered price on the `workspace_hours` billing meter (lookup key `<slug>_overage`).

Stripe's prices cannot change their amount, so a changed plan price gets a new Stripe price that takes over the
lookup key (`transfer_lookup_key`) and the old one is deactivated; subscriptions on it keep it until they change.
"""
from dataclasses import dataclass

import stripe
from django.conf import settings

from tenants.models import Plan

INTERVAL = "month"


def stripe_options():
    """Every call names its key: the process-wide stripe.api_key may belong to someone else (tests, the shell)."""
    return {"api_key": settings.STRIPE_SECRET_KEY}


def base_lookup_key(plan):
    return plan.slug


def overage_lookup_key(plan):
    return f"{plan.slug}_overage"


def sold_plans():
    """The plans a tenant pays for through Stripe: public and priced above zero (Free needs no payment, enterprise
    is arranged with staff)."""
    return list(Plan.objects.filter(public=True, monthly_price_cents__gt=0))


def plan_of_lookup_key(lookup_key):
    """The sold plan whose monthly price has this lookup key, else None (an overage price or a foreign price)."""
    if not lookup_key:
        return None
    return next((plan for plan in sold_plans() if base_lookup_key(plan) == lookup_key), None)


def prices_by_lookup_key(*keys):
    found = stripe.Price.list(lookup_keys=list(keys), active=True, limit=100, **stripe_options())
    return {price.lookup_key: price for price in found.auto_paging_iter()}


def checkout_line_items(plan):
    """The subscription items of `plan`: its monthly price and, if it has overage, the metered price (no quantity)."""
    keys = [base_lookup_key(plan)] + ([overage_lookup_key(plan)] if plan.allows_overage else [])
    prices = prices_by_lookup_key(*keys)
    missing = [key for key in keys if key not in prices]
    if missing:
        raise LookupError(f"Stripe has no active price with the lookup key {', '.join(missing)}: "
                          f"run `python manage.py billing_sync_plans`.")
    items = [{"price": prices[base_lookup_key(plan)].id, "quantity": 1}]
    if plan.allows_overage:
        items.append({"price": prices[overage_lookup_key(plan)].id})
    return items


@dataclass
class SyncReport:
    lines: list
    created: int = 0
    updated: int = 0

    def say(self, verb, what):
        self.lines.append(f"{verb:<9} {what}")
        if verb == "created":
            self.created += 1
        elif verb in ("updated", "replaced"):
            self.updated += 1


def catalogue_sync():
    """Create or update the meter, products and prices of the sold plans; idempotent. Returns a SyncReport."""
    report = SyncReport(lines=[])
    meter = _meter_sync(report)
    for plan in sold_plans():
        product = _product_sync(plan, report)
        _price_sync(report, lookup_key=base_lookup_key(plan), product=product.id, amount=plan.monthly_price_cents,
                    currency=plan.currency, recurring={"interval": INTERVAL}, nickname=f"{plan.name} monthly")
        if plan.allows_overage:
            _price_sync(report, lookup_key=overage_lookup_key(plan), product=product.id,
                        amount=plan.overage_price_cents_per_hour, currency=plan.currency,
                        recurring={"interval": INTERVAL, "usage_type": "metered", "meter": meter.id},
                        nickname=f"{plan.name} extra workspace hours")
    return report


def _meter_sync(report):
    event_name = settings.BILLING_METER_EVENT_NAME
    for meter in stripe.billing.Meter.list(status="active", limit=100, **stripe_options()).auto_paging_iter():
        if meter.event_name == event_name:
            report.say("unchanged", f"meter {event_name} ({meter.id})")
            return meter
    meter = stripe.billing.Meter.create(
        display_name="Workspace hours", event_name=event_name, default_aggregation={"formula": "sum"},
        customer_mapping={"event_payload_key": "stripe_customer_id", "type": "by_id"},
        value_settings={"event_payload_key": "value"}, **stripe_options())
    report.say("created", f"meter {event_name} ({meter.id})")
    return meter


def _product_sync(plan, report):
    """The plan's product, found by its `hearth_plan` metadata (Stripe's own ids, which every client can expand)."""
    name = f"Hearth {plan.name}"
    product = next((p for p in stripe.Product.list(limit=100, **stripe_options()).auto_paging_iter()
                    if (p.get("metadata") or {}).get("hearth_plan") == plan.slug), None)
    if product is None:
        product = stripe.Product.create(name=name, metadata={"hearth_plan": plan.slug}, **stripe_options())
        report.say("created", f"product {plan.slug} ({product.id})")
    elif product.name != name:
        product = stripe.Product.modify(product.id, name=name, **stripe_options())
        report.say("updated", f"product {plan.slug} ({product.id}): name")
    else:
        report.say("unchanged", f"product {plan.slug} ({product.id})")
    return product


def _price_sync(report, *, lookup_key, product, amount, currency, recurring, nickname):
    current = prices_by_lookup_key(lookup_key).get(lookup_key)
    wanted_recurring = {"interval": recurring["interval"], "usage_type": recurring.get("usage_type", "licensed"),
                        "meter": recurring.get("meter")}
    if current is not None:
        have = current.recurring or {}
        same = (current.unit_amount == amount and current.currency == currency and current.product == product
                and all(have.get(key) == value for key, value in wanted_recurring.items()))
        if same:
            report.say("unchanged", f"price {lookup_key} ({current.id}): {amount} {currency}")
            return current
    price = stripe.Price.create(product=product, currency=currency, unit_amount=amount, recurring=recurring,
                                lookup_key=lookup_key, transfer_lookup_key=True, nickname=nickname,
                                metadata={"hearth_lookup_key": lookup_key}, **stripe_options())
    if current is not None:
        stripe.Price.modify(current.id, active=False, **stripe_options())
        report.say("replaced", f"price {lookup_key}: {current.id} → {price.id} ({amount} {currency})")
    else:
        report.say("created", f"price {lookup_key} ({price.id}): {amount} {currency}")
    return price
