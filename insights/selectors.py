"""The business figures besides MRR (insights.revenue), each from one or two grouped queries over a range of UTC days
or billing months; docs/OBSERVABILITY.md, "Business metrics", defines each one."""
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta

from django.db import connection
from django.db.models import Count, Sum

from billing import costs
from billing.models import ReconciliationGap
from insights.revenue import plan_histories
from metering import periods
from metering.models import Meter, UsageRollup
from tenants.models import Plan
from workspaces.models import WorkspaceTemplate


def day_start(day):
    return datetime.combine(day, time.min, tzinfo=UTC)


def days_between(first, last):
    """Every date from `first` to `last`, both included."""
    return [first + timedelta(days=n) for n in range((last - first).days + 1)]


def months_between(first, last):
    """The first instants (UTC) of the billing months from the one of `first` to the one of `last` (dates)."""
    month, end = periods.month_bounds(day_start(first))[0], periods.month_bounds(day_start(last))[0]
    months = []
    while month <= end:
        months.append(month)
        month = periods.month_bounds(month)[1]
    return months


# --- active tenants and users per day ----------------------------------------------------------------------------

# A user (and their tenant) is active on a UTC day when one of their sessions held a container at some time in it.
_ACTIVE_SQL = """
SELECT d, COUNT(DISTINCT s.tenant_id), COUNT(DISTINCT s.user_id)
  FROM generate_series(%(first)s::timestamptz, %(last)s::timestamptz, interval '1 day') AS d
  JOIN workspaces_session s ON s.started_at < d + interval '1 day' AND (s.ended_at IS NULL OR s.ended_at >= d)
  JOIN tenants_tenant t ON t.id = s.tenant_id
 WHERE s.container_id IS NOT NULL AND NOT t.synthetic
   AND s.started_at < %(until)s AND (s.ended_at IS NULL OR s.ended_at >= %(first)s)
 GROUP BY d
"""


def active_per_day(*, first, last):
    """[(date, active tenants, active users)] for every day from `first` to `last` (dates)."""
    with connection.cursor() as cursor:
        cursor.execute(_ACTIVE_SQL, {"first": day_start(first), "last": day_start(last),
                                     "until": day_start(last) + timedelta(days=1)})
        counted = {moment.astimezone(UTC).date(): (tenants, users) for moment, tenants, users in cursor}
    return [(day, *counted.get(day, (0, 0))) for day in days_between(first, last)]


# --- usage per plan ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanUsage:
    month: object
    plan: str
    meter: str
    unit: str
    quantity: int
    tenants: int  # with some of it


def usage_per_plan(*, months, now):
    """[PlanUsage] per month, plan and meter: the month's roll-ups of real tenants, each counted under the plan it
    was on at the month's end (now, for the open month)."""
    if not months:
        return []
    ends = {month: min(periods.month_bounds(month)[1], now) for month in months}
    histories = plan_histories(before=max(ends.values()))
    meters = {pk: (slug, unit) for pk, slug, unit in Meter.objects.values_list("pk", "slug", "unit")}
    totals = defaultdict(lambda: [0, 0])
    rows = (UsageRollup.objects.filter(period=UsageRollup.Period.MONTH, period_start__in=months)
            .values_list("tenant_id", "meter_id", "period_start", "quantity"))
    for tenant_id, meter_id, month, quantity in rows:
        history = histories.get(tenant_id)
        if history is None or history.synthetic or not quantity:
            continue
        total = totals[month, history.plan_at(ends[month]) or history.current, meter_id]
        total[0] += quantity
        total[1] += 1
    order = {slug: n for n, slug in enumerate(Plan.objects.values_list("slug", flat=True))}
    keys = sorted(totals, key=lambda key: (key[0], order.get(key[1], len(order)), meters[key[2]][0]))
    return [PlanUsage(month, plan, *meters[meter_id], *totals[month, plan, meter_id])
            for month, plan, meter_id in keys]


# --- cost and margin per tenant (the billing cost model, as its own page computes it) ---------------------------


def margins_per_month(*, months):
    """[(month, billing.costs.Margins)]: the cost model's own figures, month by month."""
    rates = costs.cost_rates()
    return [(month, costs.margins(month_start=month, rates=rates)) for month in months]


# --- the warm pool: hit rate and open latency per day and template -----------------------------------------------

_POOL_COLUMNS = """COUNT(*), COUNT(*) FILTER (WHERE NOT s.cold_start), COUNT(s.open_ms),
       percentile_disc(0.95) WITHIN GROUP (ORDER BY s.open_ms)"""
_POOL_SQL = f"""
SELECT (date_trunc('day', s.started_at AT TIME ZONE 'UTC'))::date, w.template_id, {_POOL_COLUMNS}
  FROM workspaces_session s JOIN workspaces_workspace w ON w.id = s.workspace_id
 WHERE s.started_at >= %(first)s AND s.started_at < %(until)s
 GROUP BY 1, 2
"""
_POOL_TOTAL_SQL = f"""
SELECT w.template_id, {_POOL_COLUMNS}
  FROM workspaces_session s JOIN workspaces_workspace w ON w.id = s.workspace_id
 WHERE s.started_at >= %(first)s AND s.started_at < %(until)s
 GROUP BY 1
"""


@dataclass(frozen=True)
class PoolDay:
    day: object  # None: the whole range
    template: str
    opens: int
    warm: int  # served from the warm pool (not a cold start)
    timed: int  # opens with a recorded latency
    p95_ms: int | None

    @property
    def hit_rate(self):
        return self.warm / self.opens if self.opens else None


def pool_per_day(*, first, last):
    """([PoolDay] per day and template with opens, [PoolDay] per template for the whole range)."""
    params = {"first": day_start(first), "until": day_start(last) + timedelta(days=1)}
    slugs = dict(WorkspaceTemplate.objects.values_list("pk", "slug"))
    with connection.cursor() as cursor:
        cursor.execute(_POOL_SQL, params)
        days = [PoolDay(day, slugs[template], *figures) for day, template, *figures in cursor]
        cursor.execute(_POOL_TOTAL_SQL, params)
        totals = [PoolDay(None, slugs[template], *figures) for template, *figures in cursor]
    return sorted(days, key=lambda row: (row.day, row.template)), sorted(totals, key=lambda row: row.template)


# --- revenue at risk (billing.reconciliation's stored gaps) ------------------------------------------------------


@dataclass(frozen=True)
class RiskMonth:
    month: object
    kind: str
    currency: str
    gaps: int
    quantity: int
    cents: int


def revenue_at_risk_per_month(*, months):
    """[RiskMonth] per month, gap kind and currency: what the last reconciliation of each month found missing."""
    rows = (ReconciliationGap.objects.filter(period_start__in=months)
            .values("period_start", "kind", "currency").order_by("period_start", "kind", "currency")
            .annotate(gaps=Count("pk"), quantity=Sum("quantity"), cents=Sum("amount_cents")))
    return [RiskMonth(row["period_start"], row["kind"], row["currency"], row["gaps"], row["quantity"], row["cents"])
            for row in rows]
