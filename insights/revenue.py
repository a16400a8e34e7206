"""Monthly recurring revenue and its movement, from each tenant's plan history (docs/OBSERVABILITY.md defines them).

A tenant's plan at any moment comes from its audit trail: `tenant.onboarded` (the first plan), `tenant.plan_changed`
(every change: staff's, and billing's when a Stripe subscription starts, changes or ends) and `tenant.offboarded`.
Its recurring fee on a plan is its contract fee (`BillingAccount.fixed_fee_cents`) if it has one, else the plan's
monthly price: the rule billing's reporting charges by. Synthetic tenants count nothing. Four queries in all.
"""
from bisect import bisect_left
from dataclasses import dataclass, field

from billing.models import BillingAccount
from billing.selectors import monthly_fee_cents
from metering import periods
from tenants.models import AuditLog, Plan, Tenant

PLAN_ACTIONS = ("tenant.onboarded", "tenant.plan_changed", "tenant.offboarded")


@dataclass
class PlanHistory:
    """One tenant's plans over time: `plan_at(moment)` is the plan in force just before `moment` (None: no tenant)."""

    created: object = None
    ended: object = None
    synthetic: bool = False
    first: str | None = None  # the plan it started on
    current: str | None = None  # its plan now (tenants that still exist)
    changes: list = field(default_factory=list)  # [(moment, plan slug)], in order

    def plan_at(self, moment):
        if self.created is None or self.created >= moment or (self.ended is not None and self.ended < moment):
            return None
        index = bisect_left([at for at, _ in self.changes], moment)
        if index:
            return self.changes[index - 1][1]
        return self.first or self.current


def plan_histories(*, before):
    """{tenant key: PlanHistory} of every tenant that existed before `before` (a datetime), offboarded ones too."""
    histories = {}
    rows = (AuditLog.objects.filter(action__in=PLAN_ACTIONS, tenant_key__isnull=False, created_at__lt=before)
            .order_by("created_at", "pk").values_list("tenant_key", "action", "data", "created_at"))
    for key, action, data, at in rows:
        history = histories.setdefault(key, PlanHistory())
        data = data or {}
        if action == "tenant.onboarded":
            history.created, history.first = at, data.get("plan")
            history.synthetic = bool(data.get("synthetic"))
        elif action == "tenant.plan_changed":
            if history.first is None and not history.changes:
                history.first = data.get("from")
            history.changes.append((at, data.get("to")))
        else:
            history.ended = at
    for key, created, synthetic, plan in (Tenant.objects.filter(created_at__lt=before)
                                          .values_list("pk", "created_at", "synthetic", "plan__slug")):
        history = histories.setdefault(key, PlanHistory())
        history.created, history.synthetic, history.current = created, synthetic, plan
    return {key: history for key, history in histories.items() if history.created is not None}


@dataclass(frozen=True)
class Fees:
    """Each plan's monthly price and currency, and the tenants' contract fees."""

    prices: dict  # slug -> (cents, currency)
    contracts: dict  # tenant key -> cents

    @classmethod
    def load(cls):
        prices = {slug: (cents or 0, currency)
                  for slug, cents, currency in Plan.objects.values_list("slug", "monthly_price_cents", "currency")}
        contracts = dict(BillingAccount.objects.filter(fixed_fee_cents__isnull=False)
                         .values_list("tenant_id", "fixed_fee_cents"))
        return cls(prices, contracts)

    def monthly(self, key, plan):
        """(cents, currency) the tenant `key` pays a month on `plan` (a slug; None: nothing)."""
        if plan is None:
            return 0, None
        cents, currency = self.prices.get(plan, (0, None))
        return monthly_fee_cents(plan_price_cents=cents, contract_cents=self.contracts.get(key)), currency


@dataclass
class MrrMonth:
    """One month's MRR movement in one currency, in cents; end = start + new + expansion − contraction − churn."""

    month: object
    currency: str
    start: int = 0
    new: int = 0
    expansion: int = 0
    contraction: int = 0
    churn: int = 0
    end: int = 0
    paying: int = 0  # tenants paying at the month's end

    @property
    def net(self):
        return self.end - self.start


def mrr_movement(*, months, now):
    """[MrrMonth] per month (first instants, in order) and currency: MRR at the month's start and at its end (now,
    for the open month), and per tenant whose fee differs between the two: new (from nothing), expansion (more),
    contraction (less, not nothing) or churn (to nothing: Free, cancelled, offboarded)."""
    if not months:
        return []
    ends = [min(periods.month_bounds(month)[1], now) for month in months]
    histories = plan_histories(before=max(ends))
    fees = Fees.load()
    result = []
    for month, end in zip(months, ends, strict=True):
        rows = {}
        for key, history in histories.items():
            if history.synthetic:
                continue
            before, before_currency = fees.monthly(key, history.plan_at(month))
            after, after_currency = fees.monthly(key, history.plan_at(end))
            currency = after_currency or before_currency
            if currency is None:
                continue
            row = rows.setdefault(currency, MrrMonth(month=month, currency=currency))
            row.start += before
            row.end += after
            row.paying += after > 0
            if before == after:
                continue
            if not before:
                row.new += after
            elif not after:
                row.churn += before
            elif after > before:
                row.expansion += after - before
            else:
                row.contraction += before - after
        result.append(rows)
    # A month before any tenant of a currency existed still has its row, of zeros.
    currencies = sorted({currency for rows in result for currency in rows})
    return [rows.get(currency) or MrrMonth(month=month, currency=currency)
            for month, rows in zip(months, result, strict=True) for currency in currencies]
