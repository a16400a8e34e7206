"""The business pages' content: for each figure its definition, its table (the CSV's rows too) and its charts.

Numbers are rounded once here, to text, so the page and the CSV show the same figures: money in major units with
two decimals (cents are exact integers underneath), percentages with one.
"""
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

from billing.costs_admin import figures as margin_figures
from insights import charts, revenue, selectors
from metering.meters import WORKSPACE_SECONDS

TENTH = Decimal("0.1")


def money(cents):
    return f"{Decimal(cents) / 100:.2f}"


def percent(part, whole):
    return str((Decimal(part) * 100 / whole).quantize(TENTH, rounding=ROUND_HALF_UP)) if whole else ""


@dataclass
class Report:
    slug: str
    title: str
    definition: str
    columns: tuple
    rows: list = field(default_factory=list)  # lists of str, one per column
    charts: list = field(default_factory=list)  # inline SVG


def mrr(first, last, now):
    """MRR and its movement"""
    months = selectors.months_between(first, last)
    rows = revenue.mrr_movement(months=months, now=now)
    report = Report("mrr", "MRR and its movement", (
        "Monthly recurring revenue: what the real tenants' plans (or contract fees) charge a month, from each "
        "tenant's plan history. Per month, each tenant whose fee differs between the month's start and its end "
        "(now, for the open month) counts as new (from nothing), expansion, contraction or churn (to nothing)."),
        ("month", "currency", "mrr_start", "new", "expansion", "contraction", "churn", "mrr_end", "net",
         "paying_tenants"))
    for row in rows:
        report.rows.append([f"{row.month:%Y-%m}", row.currency, money(row.start), money(row.new),
                            money(row.expansion), money(row.contraction), money(row.churn), money(row.end),
                            money(row.net), str(row.paying)])
    labels = [f"{month:%Y-%m}" for month in months]
    for currency in sorted({row.currency for row in rows}):
        by_month = {row.month: row for row in rows if row.currency == currency}

        def values(of, by_month=by_month):
            return [of(by_month[month]) / 100 if month in by_month else 0 for month in months]

        unit = currency.upper()
        report.charts.append(charts.line_chart(title=f"MRR at each month's end ({unit})", labels=labels,
                                               series=[("MRR", values(lambda row: row.end))], unit=unit))
        report.charts.append(charts.bar_chart(title=f"MRR movement ({unit})", labels=labels, unit=unit, series=[
            ("new", values(lambda row: row.new)), ("expansion", values(lambda row: row.expansion)),
            ("contraction", values(lambda row: -row.contraction)), ("churn", values(lambda row: -row.churn))]))
    return report


def active(first, last, now):
    """Active tenants and users per day"""
    rows = selectors.active_per_day(first=first, last=last)
    report = Report("active", "Active tenants and users per day", (
        "A user, and their tenant, is active on a UTC day when one of their workspace sessions held a container at "
        "some time that day. Synthetic tenants are left out."), ("day", "active_tenants", "active_users"))
    report.rows = [[f"{day:%Y-%m-%d}", str(tenants), str(users)] for day, tenants, users in rows]
    report.charts.append(charts.line_chart(
        title="Active tenants and users per day", labels=[f"{day:%m-%d}" for day, _, _ in rows],
        series=[("tenants", [tenants for _, tenants, _ in rows]), ("users", [users for _, _, users in rows])]))
    return report


def usage(first, last, now):
    """Usage per plan"""
    months = selectors.months_between(first, last)
    rows = selectors.usage_per_plan(months=months, now=now)
    report = Report("usage", "Usage per plan", (
        "Each meter's monthly roll-ups of the real tenants, added up under the plan each tenant was on at the "
        "month's end (now, for the open month); `tenants` counts those with some of it."),
        ("month", "plan", "meter", "unit", "quantity", "tenants"))
    report.rows = [[f"{row.month:%Y-%m}", row.plan or "", row.meter, row.unit, str(row.quantity), str(row.tenants)]
                   for row in rows]
    plans = list(dict.fromkeys(row.plan for row in rows if row.meter == WORKSPACE_SECONDS))
    hours = {(row.month, row.plan): row.quantity / 3600 for row in rows if row.meter == WORKSPACE_SECONDS}
    report.charts.append(charts.bar_chart(
        title="Workspace hours per plan", labels=[f"{month:%Y-%m}" for month in months], unit="hours",
        series=[(plan or "?", [hours.get((month, plan), 0) for month in months]) for plan in plans]))
    return report


def margins(first, last, now):
    """Cost and margin per tenant"""
    months = selectors.months_between(first, last)
    per_month = selectors.margins_per_month(months=months)
    columns = ("scope", "month", "plan", "tenant", "revenue", "cost", "margin", "margin_percent", "currency")
    report = Report("margins", "Cost and margin per tenant", (
        "The billing cost model's own figures (Billing › Costs and margins), month by month: revenue is what "
        "billing charged, cost the tenant's usage at the unit prices plus its share of the fixed costs."), columns)
    totals = []
    for month, result in per_month:
        total = margin_figures(result.total)
        totals.append(total)
        report.rows.append(["total", f"{month:%Y-%m}", "", "", *(total[name] for name in columns[4:])])
        for row in result.tenants:
            shown = margin_figures(row)
            report.rows.append(["tenant", f"{month:%Y-%m}", row.plan_slug, row.slug,
                                *(shown[name] for name in columns[4:])])
    report.charts.append(charts.line_chart(
        title="Revenue, cost and margin per month", labels=[f"{month:%Y-%m}" for month, _ in per_month],
        unit=(per_month[0][1].rates.currency.upper() if per_month else ""),
        series=[(name, [float(total[name]) for total in totals]) for name in ("revenue", "cost", "margin")]))
    return report


def pool(first, last, now):
    """Pool hit rate and p95 open latency"""
    days, totals = selectors.pool_per_day(first=first, last=last)
    report = Report("pool", "Pool hit rate and p95 open latency", (
        "Per UTC day and template, of the sessions opened (resumes are not opens): the share served from the "
        "warm pool (not a cold start) and the 95th percentile (nearest rank) of the open latency, from the open "
        "request to the session having its container. The rows `all` cover the whole range."),
        ("day", "template", "opens", "warm", "hit_rate_percent", "timed_opens", "p95_open_ms"))
    for row in [*days, *totals]:
        report.rows.append([f"{row.day:%Y-%m-%d}" if row.day else "all", row.template, str(row.opens),
                            str(row.warm), percent(row.warm, row.opens), str(row.timed),
                            "" if row.p95_ms is None else str(row.p95_ms)])
    dates = selectors.days_between(first, last)
    labels = [f"{day:%m-%d}" for day in dates]
    templates = sorted({row.template for row in days})
    by_key = {(row.day, row.template): row for row in days}

    def series(of):
        return [(template, [of(by_key[day, template]) if (day, template) in by_key else None for day in dates])
                for template in templates]

    report.charts.append(charts.line_chart(title="Warm pool hit rate per day", labels=labels, unit="%",
                                           series=series(lambda row: 100 * row.warm / row.opens)))
    report.charts.append(charts.line_chart(title="p95 open latency per day", labels=labels, unit="ms",
                                           series=series(lambda row: row.p95_ms)))
    return report


def risk(first, last, now):
    """Revenue at risk"""
    months = selectors.months_between(first, last)
    rows = selectors.revenue_at_risk_per_month(months=months)
    report = Report("risk", "Revenue at risk", (
        "What the last reconciliation of each billing month found between what was metered, reported and billed, "
        "per gap kind, in money (billing.reconciliation's stored gaps, as on the staff overview)."),
        ("month", "kind", "currency", "gaps", "quantity", "amount"))
    report.rows = [[f"{row.month:%Y-%m}", row.kind, row.currency, str(row.gaps), str(row.quantity),
                    money(row.cents)] for row in rows]
    currencies = sorted({row.currency for row in rows})
    report.charts.append(charts.bar_chart(
        title="Revenue at risk per month", labels=[f"{month:%Y-%m}" for month in months],
        unit="/".join(currency.upper() for currency in currencies),
        series=[(currency.upper(), [sum(row.cents for row in rows if row.month == month and row.currency == currency)
                                    / 100 for month in months]) for currency in currencies]))
    return report


REPORTS = {builder.__name__: builder for builder in (mrr, active, usage, margins, pool, risk)}
