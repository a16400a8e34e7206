"""The upcoming invoice (Stripe's invoice preview), from a subscription or a proposed one."""
import time

from localstripe.resources import (
    InvoiceItem,
    random_id,
    store,
)

from billing.stripe_emulator.resources.common import (
    Exported,
    invalid,
    json_number,
    money,
    period_end_after,
    reject_unknown,
)
from billing.stripe_emulator.resources.meters import Meter
from billing.stripe_emulator.resources.subscriptions import Subscription


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
