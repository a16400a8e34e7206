"""Metering periods: the tenant's day (its time zone, UTC by default) and the billing month (the UTC calendar month)."""
import time
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.conf import settings
from django.utils import timezone


@lru_cache(maxsize=256)
def zone(name):
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


_zones = {}  # tenant id -> (ZoneInfo, loaded at): read on every usage read, changed almost never
ZONE_TTL = 60.0


def tenant_zone(tenant):
    """The tenant's time zone (TenantMeteringSettings), UTC without one; cached per process for ZONE_TTL seconds."""
    return zone_for_tenant_id(tenant.pk)


def zone_for_tenant_id(tenant_id):
    from metering.models import TenantMeteringSettings

    hit = _zones.get(tenant_id)
    if hit is not None and time.monotonic() - hit[1] < ZONE_TTL:
        return hit[0]
    name = TenantMeteringSettings.objects.filter(tenant_id=tenant_id).values_list("timezone", flat=True).first()
    _zones[tenant_id] = (zone(name or "UTC"), time.monotonic())
    return _zones[tenant_id][0]


def day_start_in(tz, moment):
    """Midnight of `moment`'s day in `tz`, as an aware UTC datetime."""
    local = moment.astimezone(tz)
    return datetime(local.year, local.month, local.day, tzinfo=tz).astimezone(UTC)


def zone_forget(tenant_id=None):
    """Drop cached zones (all, or one tenant's) after a time zone change."""
    if tenant_id is None:
        _zones.clear()
    else:
        _zones.pop(tenant_id, None)


def day_bounds(tenant, now=None):
    """[start, end) of the tenant's day containing `now`, as aware UTC datetimes."""
    now = now or timezone.now()
    tz = tenant_zone(tenant)
    local = now.astimezone(tz)
    start_local = datetime(local.year, local.month, local.day, tzinfo=tz)
    next_local = start_local.replace(tzinfo=None) + timedelta(days=1)
    end_local = datetime(next_local.year, next_local.month, next_local.day, tzinfo=tz)
    return start_local.astimezone(UTC), end_local.astimezone(UTC)


def month_bounds(now=None):
    """[start, end) of the billing month containing `now`: the UTC calendar month for every tenant.

    The calendar month (not the subscription's anniversary) keeps roll-ups shared by billing and quotas and
    makes "resets on the 1st" easy to explain; billing prorates subscriptions that start mid-month.
    """
    now = (now or timezone.now()).astimezone(UTC)
    start = datetime(now.year, now.month, 1, tzinfo=UTC)
    end = datetime(now.year + (now.month == 12), now.month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def previous_month_start(now=None):
    start, _ = month_bounds(now)
    return month_bounds(start - timedelta(seconds=1))[0]


def open_since(now=None):
    """The oldest timestamp the ingestion API still accepts: the start of the open billing month.

    The previous month stays open for METERING_LATE_EVENT_GRACE after it ends, for late reporters; after that
    its roll-ups are final for billing and late events are rejected (staff record a correction instead).
    """
    now = now or timezone.now()
    start, _ = month_bounds(now)
    if now - start < settings.METERING_LATE_EVENT_GRACE:
        return previous_month_start(now)
    return start


def boundaries_between(tenant, start, end):
    """The day and month boundaries strictly inside (start, end), sorted: where a duration must be split."""
    cuts = set()
    day_start, day_end = day_bounds(tenant, start)
    while day_end < end:
        cuts.add(day_end)
        day_start, day_end = day_bounds(tenant, day_end)
    month_start, month_end = month_bounds(start)
    while month_end < end:
        cuts.add(month_end)
        month_start, month_end = month_bounds(month_end)
    return sorted(c for c in cuts if start < c < end)
