"""The cost model: what serving each tenant costs in a billing month, what it is billed, and the margin.

Cost = container-seconds × the plan's vCPUs (and memory) × unit prices + storage GiB-months + egress GiB + an equal
share of the month's fixed costs (warm pool, file storage, database). Revenue = what billing charged for the month.
The unit prices are the one `CostRates` row (admin). Reads are set-based: a few aggregates over every tenant, the
prices applied per row by `usage_cost`, the one formula, which the dashboards and the plan simulator reuse.
"""
from dataclasses import dataclass, field
from decimal import Decimal

from django.db import transaction
from django.db.models import Q, Sum
from django.utils import timezone

from billing.models import BillingEvent, CostRates
from billing.subscriptions import LIVE
from metering import periods
from metering.meters import EGRESS_BYTES, WORKSPACE_SECONDS
from metering.selectors import GIB, month_totals_by_tenant, storage_gb_months_by_tenant
from tenants.audit import audit_record
from tenants.models import Plan, Tenant

ZERO = Decimal(0)
CENTS = Decimal(100)
MIB_PER_GIB = Decimal(1024)


def cost_rates():
    """The unit prices and fixed costs (the row is made with the defaults if it went missing)."""
    return CostRates.objects.get_or_create(id=CostRates.SINGLETON)[0]


def cost_rates_update(*, rates, actor):
    """Save staff's edit of the unit prices; the audit row (old and new value of each changed field) is written in
    the same transaction."""
    names = [f.name for f in CostRates._meta.concrete_fields if f.name not in ("id", "updated_at")]
    with transaction.atomic():
        before = CostRates.objects.select_for_update().filter(id=rates.id).first()
        changed = {name: [str(getattr(before, name)) if before else None, str(getattr(rates, name))]
                   for name in names if before is None or getattr(before, name) != getattr(rates, name)}
        rates.save()
        if changed:
            audit_record(tenant=None, actor=actor, action="billing.cost_rates_changed", target="cost rates",
                         data=changed)
    return rates


@dataclass(frozen=True)
class Usage:
    """What a tenant used in a month, in the units its costs are priced in."""

    workspace_seconds: int = 0
    vcpus: Decimal = ZERO  # of each container-second: the plan's CPU limit
    memory_gib: Decimal = ZERO  # likewise its memory limit
    storage_gb_months: Decimal = ZERO
    egress_gb: Decimal = ZERO


@dataclass(frozen=True)
class Cost:
    compute: Decimal = ZERO
    memory: Decimal = ZERO
    storage: Decimal = ZERO
    egress: Decimal = ZERO
    fixed: Decimal = ZERO

    @property
    def total(self):
        return self.compute + self.memory + self.storage + self.egress + self.fixed

    def __add__(self, other):
        return Cost(self.compute + other.compute, self.memory + other.memory, self.storage + other.storage,
                    self.egress + other.egress, self.fixed + other.fixed)


def plan_vcpus(plan, rates):
    """The vCPUs a container-second of `plan` is priced at: its CPU limit, else the rates' default."""
    return plan.cpus if plan.cpus is not None else rates.default_vcpus


def plan_memory_gib(plan, rates):
    return Decimal(plan.memory_mb or rates.default_memory_mb) / MIB_PER_GIB


def usage_cost(usage, *, rates, fixed_share=ZERO):
    """What `usage` costs at `rates` (exact Decimals, in the rates' currency), plus a share of the fixed costs."""
    seconds = Decimal(usage.workspace_seconds)
    return Cost(
        compute=seconds * usage.vcpus * rates.vcpu_second,
        memory=seconds * usage.memory_gib * rates.memory_gb_second,
        storage=usage.storage_gb_months * rates.storage_gb_month,
        egress=usage.egress_gb * rates.egress_gb,
        fixed=fixed_share,
    )


def cost_per_user_month(*, plan, hours, storage_gb=ZERO, egress_gb=ZERO, sharing=None, rates=None):
    """What one user of `plan` costs a month with this much workspace time, storage (GiB kept all month) and egress
    (GiB); with `sharing`, also 1/sharing of the fixed costs. For simulators: the same formula as the staff page."""
    rates = rates or cost_rates()
    usage = Usage(workspace_seconds=int(Decimal(hours) * 3600), vcpus=plan_vcpus(plan, rates),
                  memory_gib=plan_memory_gib(plan, rates), storage_gb_months=Decimal(storage_gb),
                  egress_gb=Decimal(egress_gb))
    share = rates.fixed_month / sharing if sharing else ZERO
    return usage_cost(usage, rates=rates, fixed_share=share).total


@dataclass(frozen=True)
class TenantMargin:
    tenant_id: int
    slug: str
    name: str
    plan_slug: str
    plan_name: str
    currency: str
    usage: Usage
    cost: Cost
    fee: Decimal  # the month's fixed fee billed (Hearth's invoice and/or the Stripe subscription)
    overage: Decimal  # usage beyond the allowance billed

    @property
    def revenue(self):
        return self.fee + self.overage

    @property
    def margin(self):
        return self.revenue - self.cost.total

    @property
    def losing(self):
        return self.margin < 0


@dataclass
class PlanMargin:
    plan_slug: str
    plan_name: str
    currency: str
    tenants: int = 0
    losing: int = 0
    workspace_seconds: int = 0
    storage_gb_months: Decimal = ZERO
    egress_gb: Decimal = ZERO
    cost: Cost = field(default_factory=Cost)
    fee: Decimal = ZERO
    overage: Decimal = ZERO

    @property
    def revenue(self):
        return self.fee + self.overage

    @property
    def margin(self):
        return self.revenue - self.cost.total

    def add(self, row):
        self.tenants += 1
        self.losing += row.losing
        self.workspace_seconds += row.usage.workspace_seconds
        self.storage_gb_months += row.usage.storage_gb_months
        self.egress_gb += row.usage.egress_gb
        self.cost += row.cost
        self.fee += row.fee
        self.overage += row.overage


@dataclass(frozen=True)
class Margins:
    month_start: object
    month_end: object
    rates: CostRates
    served: int  # the tenants sharing the fixed costs
    tenants: list
    plans: list

    @property
    def losers(self):
        return sorted((row for row in self.tenants if row.losing), key=lambda row: row.margin)

    @property
    def total(self):
        total = PlanMargin(plan_slug="", plan_name="All plans", currency=self.rates.currency)
        for row in self.tenants:
            total.add(row)
        return total


def billed_by_tenant(*, month_start):
    """{tenant id: (fee cents, overage cents)} billing recorded for the month: its billing events (the invoice
    provider's fees, overage for every provider). Stripe's subscription fee is not an event (see `margins`)."""
    events = BillingEvent.objects.filter(period_start=month_start, tenant__isnull=False)
    rows = (events.values("tenant_id").order_by("tenant_id")
            .annotate(fee=Sum("amount_cents", filter=Q(kind=BillingEvent.Kind.PLAN_FEE), default=0),
                      overage=Sum("amount_cents", filter=Q(kind=BillingEvent.Kind.USAGE), default=0)))
    return {row["tenant_id"]: (row["fee"], row["overage"]) for row in rows}


@dataclass(frozen=True)
class _Served:
    id: int
    slug: str
    name: str
    plan_id: int
    subscribed: bool


def _served(month_end, *, active_ids):
    """The tenants served in the month: real (not synthetic), existing before its end, and not offboarded unless
    they used or were billed something in it (`active_ids`). Plain rows: a thousand models cost more than the SQL."""
    rows = (Tenant.objects.filter(created_at__lt=month_end, synthetic=False)
            .order_by("plan__sort_order", "plan__slug", "slug")
            .values_list("pk", "slug", "name", "plan_id", "status", "subscription_id", "subscription_status"))
    return [_Served(pk, slug, name, plan_id, bool(subscription_id) and subscription_status in LIVE)
            for pk, slug, name, plan_id, status, subscription_id, subscription_status in rows
            if status != Tenant.Status.OFFBOARDED or pk in active_ids]


def margins(*, month_start=None, rates=None, tenant=None):
    """Revenue, cost and margin per tenant and per plan for the billing month starting at `month_start` (default:
    the open month, so far). With `tenant`, only its row, its fixed share still that of the whole month."""
    month_start, month_end = periods.month_bounds(month_start or timezone.now())
    rates = rates or cost_rates()
    used = month_totals_by_tenant(month_start=month_start, meters=[WORKSPACE_SECONDS, EGRESS_BYTES])
    storage = storage_gb_months_by_tenant(month_start=month_start)
    billed = billed_by_tenant(month_start=month_start)
    served = _served(month_end, active_ids=used.keys() | storage.keys() | billed.keys())
    plans_by_id = {plan.pk: plan for plan in Plan.objects.all()}
    share = rates.fixed_month / len(served) if served else ZERO
    rows, plans = [], {}
    for each in served:
        if tenant is not None and each.id != tenant.pk:
            continue
        plan = plans_by_id[each.plan_id]
        totals = used.get(each.id, {})
        usage = Usage(workspace_seconds=totals.get(WORKSPACE_SECONDS, 0), vcpus=plan_vcpus(plan, rates),
                      memory_gib=plan_memory_gib(plan, rates), storage_gb_months=storage.get(each.id, ZERO),
                      egress_gb=Decimal(totals.get(EGRESS_BYTES, 0)) / GIB)
        fee_cents, overage_cents = billed.get(each.id, (0, 0))
        # The Stripe subscription bills the plan's price itself (no billing event): a live one counts in full.
        if each.subscribed and plan.monthly_price_cents:
            fee_cents += plan.monthly_price_cents
        row = TenantMargin(tenant_id=each.id, slug=each.slug, name=each.name, plan_slug=plan.slug,
                           plan_name=plan.name, currency=plan.currency, usage=usage,
                           cost=usage_cost(usage, rates=rates, fixed_share=share),
                           fee=Decimal(fee_cents) / CENTS, overage=Decimal(overage_cents) / CENTS)
        rows.append(row)
        plans.setdefault(plan.slug, PlanMargin(plan_slug=plan.slug, plan_name=plan.name,
                                               currency=plan.currency)).add(row)
    return Margins(month_start=month_start, month_end=month_end, rates=rates, served=len(served), tenants=rows,
                   plans=list(plans.values()))


def tenant_margin(tenant, *, month_start=None, rates=None):
    """The tenant's revenue, cost and margin in the month, or None if it was not served in it."""
    rows = margins(month_start=month_start, rates=rates, tenant=tenant).tenants
    return rows[0] if rows else None
