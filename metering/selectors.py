"""Reads of metering, from the roll-ups only (never an event scan): current usage, allowances, banners, charts."""
import time
from datetime import timedelta
from decimal import Decimal

from django.conf import settings
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from metering import periods
from metering.meters import SEATS, STORAGE_BYTES, WORKSPACE_SECONDS
from metering.models import Meter, UsageRollup
from tenants.models import Tenant

MIB = 1024 * 1024
GIB = 1024**3


_meter_list = {"meters": None, "loaded_at": 0.0}
METER_TTL = 30.0


def _meters():
    """Active meters, cached per process for METER_TTL seconds (read on every usage read)."""
    if _meter_list["meters"] is None or time.monotonic() - _meter_list["loaded_at"] > METER_TTL:
        _meter_list["meters"] = list(Meter.objects.filter(active=True).order_by("slug"))
        _meter_list["loaded_at"] = time.monotonic()
    return _meter_list["meters"]


def meters_forget():
    _meter_list["meters"] = None


def included(plan, meter_slug, period):
    """What the plan includes of a meter in a period; None: no allowance (unlimited or simply metered)."""
    if meter_slug == WORKSPACE_SECONDS:
        if period == "day":
            return plan.daily_minutes * 60 if plan.daily_minutes is not None else None
        return plan.monthly_hours * 3600 if plan.monthly_hours is not None else None
    if period != "month":
        return None
    if meter_slug == STORAGE_BYTES:
        return plan.storage_mb * MIB if plan.storage_mb is not None else None
    if meter_slug == SEATS:
        return plan.seats
    return None


_ROLLUP_COLUMNS = ("meter_id", "period", "period_start", "quantity", "event_count", "last_quantity", "last_at")


def _rollups(tenant, keys):
    """{(meter_id, period): rollup} for the (period, period_start) pairs in `keys`: one indexed query.

    A hand-written query: compiling the ORM's OR of pairs costs ten times the query itself.
    """
    if not keys:
        return {}
    pairs = " OR ".join(["(period = %s AND period_start = %s)"] * len(keys))
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT {', '.join(_ROLLUP_COLUMNS)} FROM metering_usagerollup WHERE tenant_id = %s AND ({pairs})",
            [tenant.pk, *[value for key in keys for value in key]],
        )
        rows = cursor.fetchall()
    found = {}
    for row in rows:
        rollup = UsageRollup(tenant_id=tenant.pk, **dict(zip(_ROLLUP_COLUMNS, row, strict=True)))
        found[(rollup.meter_id, rollup.period)] = rollup
    return found


def _figure(meter, rollup, allowance, *, allows_overage=False):
    if meter.aggregation == Meter.Aggregation.MAX:
        used = rollup.last_quantity if rollup and rollup.last_quantity is not None else 0
    else:
        used = rollup.quantity if rollup else 0
    figure = {
        "used": used,
        "included": allowance,
        "remaining": max(0, allowance - used) if allowance is not None else None,
        "unit": meter.unit,
    }
    if meter.aggregation == Meter.Aggregation.MAX:
        figure["peak"] = rollup.quantity if rollup else 0
    if allowance is not None and allows_overage:
        figure["overage"] = max(0, used - allowance)
    return figure


def usage_current(*, tenant, now=None):
    """The tenant's usage in the open billing month and today, with what its plan includes. Reads roll-ups only."""
    now = now or timezone.now()
    month_start, month_end = periods.month_bounds(now)
    day_start, day_end = periods.day_bounds(tenant, now)
    rollups = _rollups(tenant, [("month", month_start), ("day", day_start)])
    plan = tenant.plan
    meters, daily = {}, {}
    for meter in _meters():
        meters[meter.slug] = _figure(meter, rollups.get((meter.pk, "month")), included(plan, meter.slug, "month"),
                                     allows_overage=plan.allows_overage and meter.slug == WORKSPACE_SECONDS)
        day_allowance = included(plan, meter.slug, "day")
        if day_allowance is not None or meter.aggregation == Meter.Aggregation.SUM:
            daily[meter.slug] = _figure(meter, rollups.get((meter.pk, "day")), day_allowance)
    return {
        "tenant": tenant.slug,
        "plan": plan.slug,
        "period": {"start": month_start, "end": month_end},
        "meters": meters,
        "day": {"start": day_start, "end": day_end, "meters": daily},
    }


def workspace_allowance(*, tenant, now=None):
    """{"day": {...} | None, "month": {...} | None}: used, included, remaining and resets_at of workspace time."""
    now = now or timezone.now()
    plan = tenant.plan
    month_start, month_end = periods.month_bounds(now)
    day_start, day_end = periods.day_bounds(tenant, now)
    daily = included(plan, WORKSPACE_SECONDS, "day")
    monthly = included(plan, WORKSPACE_SECONDS, "month")
    if daily is None and monthly is None:
        return {"day": None, "month": None}
    keys = []
    if daily is not None:
        keys.append(("day", day_start))
    if monthly is not None:
        keys.append(("month", month_start))
    meter_id = _meter_id(WORKSPACE_SECONDS)
    rollups = _rollups(tenant, keys)
    result = {"day": None, "month": None}
    for period, allowance, resets_at in (("day", daily, day_end), ("month", monthly, month_end)):
        if allowance is None:
            continue
        rollup = rollups.get((meter_id, period))
        used = rollup.quantity if rollup else 0
        result[period] = {"used": used, "included": allowance, "remaining": max(0, allowance - used),
                          "resets_at": resets_at}
    return result


def workspace_seconds_remaining(*, tenant, now=None):
    """Seconds of workspace time the tenant has left now, or None (no limit, or the plan allows paid overage).

    Counts the seconds already recorded: a caller ending running sessions subtracts what its sessions used
    since their `metered_until`. 0 means the allowance is used up exactly.
    """
    allowance = workspace_allowance(tenant=tenant, now=now)
    candidates = []
    if allowance["day"] is not None:
        candidates.append(allowance["day"]["remaining"])
    if allowance["month"] is not None and not tenant.plan.allows_overage:
        candidates.append(allowance["month"]["remaining"])
    return min(candidates) if candidates else None


def _meter_id(slug):
    return next((meter.pk for meter in _meters() if meter.slug == slug), None)


def storage_current(*, tenant, now=None):
    """The latest storage sample in bytes (0 if never measured)."""
    meter_id = _meter_id(STORAGE_BYTES)
    latest = (
        UsageRollup.objects.filter(tenant=tenant, meter_id=meter_id, period="day", last_at__isnull=False)
        .order_by("-period_start")
        .values_list("last_quantity", flat=True)
        .first()
    )
    return latest or 0


def storage_gb_months(*, tenant, month_start):
    """Billable storage of a billing month in GB-month: the mean of the month's daily peaks, in GiB (a Decimal)."""
    return storage_gb_months_by_tenant(month_start=month_start, tenant=tenant).get(tenant.pk, Decimal(0))


def storage_gb_months_by_tenant(*, month_start, tenant=None):
    """{tenant id: GB-months} of every tenant with storage samples in the month (or one tenant's): one aggregate.

    The day roll-ups starting within the month are the days' peaks (the tenant's days); their sum over the days of
    the month, in GiB, is the mean peak. A month still open counts its days so far over all its days.
    """
    _, month_end = periods.month_bounds(month_start)
    meter_id = Meter.objects.filter(slug=STORAGE_BYTES).values_list("pk", flat=True).first()
    peaks = UsageRollup.objects.filter(meter_id=meter_id, period="day", period_start__gte=month_start,
                                       period_start__lt=month_end)
    if tenant is not None:
        peaks = peaks.filter(tenant=tenant)
    byte_days = peaks.values("tenant_id").order_by("tenant_id").annotate(total=Sum("quantity"))
    divisor = Decimal((month_end - month_start).days * GIB)
    return {row["tenant_id"]: Decimal(row["total"]) / divisor for row in byte_days}


def month_totals_by_tenant(*, month_start, meters, tenant=None):
    """{tenant id: {meter slug: quantity}}: the month roll-ups of counter `meters` for every tenant (or one)."""
    by_id = dict(Meter.objects.filter(slug__in=meters).values_list("pk", "slug"))
    rows = UsageRollup.objects.filter(period="month", period_start=month_start, meter_id__in=list(by_id))
    if tenant is not None:
        rows = rows.filter(tenant=tenant)
    totals = {}
    for tenant_id, meter_id, quantity in rows.values_list("tenant_id", "meter_id", "quantity"):
        totals.setdefault(tenant_id, {})[by_id[meter_id]] = quantity
    return totals


def usage_limits(*, tenant, now=None):
    """Every allowance the tenant's plan sets, with its use: the input of notices, banners and admin."""
    now = now or timezone.now()
    plan = tenant.plan
    month_start, month_end = periods.month_bounds(now)
    day_start, day_end = periods.day_bounds(tenant, now)
    rollups = _rollups(tenant, [("month", month_start), ("day", day_start)])
    items = []
    for meter in _meters():
        for period, start, end in (("day", day_start, day_end), ("month", month_start, month_end)):
            allowance = included(plan, meter.slug, period)
            if allowance is None:
                continue
            rollup = rollups.get((meter.pk, period))
            if meter.aggregation == Meter.Aggregation.MAX:
                used = rollup.last_quantity if rollup and rollup.last_quantity is not None else 0
                if meter.slug == STORAGE_BYTES and rollup is None:
                    used = storage_current(tenant=tenant, now=now)
            else:
                used = rollup.quantity if rollup else 0
            items.append({
                "meter": meter.slug, "meter_id": meter.pk, "name": meter.name, "unit": meter.unit,
                "period": period, "period_start": start,
                "resets_at": end if meter.aggregation == Meter.Aggregation.SUM else None,
                "used": used, "included": allowance,
                "ratio": used / allowance if allowance else (1.0 if used else 0.0),
                "overage_allowed": plan.allows_overage and meter.slug == WORKSPACE_SECONDS and period == "month",
            })
    return items


def _format(value, unit):
    if unit == "seconds":
        minutes = value // 60
        return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"
    if unit == "bytes":
        return f"{value / MIB:.0f} MB" if value < 1024 * MIB else f"{value / 1024**3:.1f} GB"
    return f"{value} {unit}"


def usage_banner(tenant, now=None):
    """The portal's usage warning for a tenant, or None: {"level": "warning"|"danger", "message", "url"}."""
    if tenant is None:
        return None
    items = [item for item in usage_limits(tenant=tenant, now=now) if item["ratio"] >= 0.8]
    if not items:
        return None
    worst = max(items, key=lambda item: item["ratio"])
    what = f"{worst['name'].lower()} {'today' if worst['period'] == 'day' else 'this month'}"
    used, allowance = _format(worst["used"], worst["unit"]), _format(worst["included"], worst["unit"])
    if worst["ratio"] >= 1:
        if worst["overage_allowed"]:
            message = f"You have used all {allowance} of {what}; further use is billed as overage."
        else:
            when = f" It resets {worst['resets_at']:%Y-%m-%d %H:%M} UTC." if worst["resets_at"] else ""
            message = f"You have used all {allowance} of {what}.{when} Upgrade your plan for more."
        level = "danger"
    else:
        message = f"You have used {used} of {allowance} of {what} ({worst['ratio']:.0%})."
        level = "warning"
    return {"level": level, "message": message, "url": settings.METERING_UPGRADE_URL}


def usage_series(*, tenant, now=None):
    """Per meter, the day roll-ups of the open billing month: {slug: {"meter", "days": [(day_start, qty)]}}."""
    now = now or timezone.now()
    month_start, month_end = periods.month_bounds(now)
    meters = {meter.pk: meter for meter in _meters()}
    series = {meter.slug: {"meter": meter, "days": {}} for meter in meters.values()}
    # Day roll-ups that start in this month (a tenant west of UTC has one starting the evening before).
    rows = UsageRollup.objects.filter(
        tenant=tenant, period="day", period_start__gte=month_start - timedelta(days=1), period_start__lt=month_end
    ).values_list("meter_id", "period_start", "quantity", "last_quantity")
    for meter_id, start, quantity, _last in rows:
        meter = meters.get(meter_id)
        if meter is not None:
            series[meter.slug]["days"][start] = quantity
    day_start, _ = periods.day_bounds(tenant, month_start)
    days = []
    cursor = day_start
    while cursor < month_end:
        days.append(cursor)
        cursor = periods.day_bounds(tenant, cursor)[1]
    return {slug: {"meter": item["meter"], "days": [(day, item["days"].get(day, 0)) for day in days]}
            for slug, item in series.items()}


def tenants_near_limits(*, now=None, ratio=0.8):
    """(tenant, item) for every active tenant's allowance used at `ratio` or more, worst first."""
    now = now or timezone.now()
    month_start, _ = periods.month_bounds(now)
    tenant_ids = (
        UsageRollup.objects.filter(period_start__gte=month_start - timedelta(days=1))
        .values_list("tenant_id", flat=True).distinct()
    )
    found = []
    for tenant in Tenant.objects.filter(pk__in=tenant_ids, status=Tenant.Status.ACTIVE).select_related("plan"):
        for item in usage_limits(tenant=tenant, now=now):
            if item["ratio"] >= ratio:
                found.append((tenant, item))
    return sorted(found, key=lambda pair: -pair[1]["ratio"])


def unusual_usage(*, now=None, factor=3, days=7):
    """Today's counter usage above `factor` × the tenant's mean over the previous `days` days (UTC days).

    Returns dicts: tenant slug, meter, today, average. Tenants with no history count as average 0, so a new
    tenant's first busy day shows up too (it is unusual for the operator to know about).
    """
    now = now or timezone.now()
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    since = today - timedelta(days=days)
    rows = UsageRollup.objects.filter(
        period="day", aggregation=Meter.Aggregation.SUM, period_start__gte=since - timedelta(hours=12),
        period_start__lt=today + timedelta(days=1),
    ).values_list("tenant_id", "tenant__slug", "meter__slug", "meter__unit", "period_start", "quantity")
    history, current = {}, {}
    for tenant_id, slug, meter, unit, start, quantity in rows:
        key = (tenant_id, slug, meter, unit)
        if start >= today - timedelta(hours=12):
            current[key] = current.get(key, 0) + quantity
        else:
            history[key] = history.get(key, 0) + quantity
    found = []
    for (_tenant_id, slug, meter, unit), quantity in sorted(current.items(), key=lambda item: item[0][1:3]):
        average = history.get((_tenant_id, slug, meter, unit), 0) / days
        if quantity > 0 and quantity > factor * average:
            found.append({"tenant": slug, "meter": meter, "unit": unit, "today": quantity, "average": average})
    return found
