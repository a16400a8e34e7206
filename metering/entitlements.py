"""Allowances and entitlements: whether a tenant may open a workspace now, and the threshold notices of its usage."""
from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from metering import selectors
from metering.exceptions import QuotaExceeded
from metering.meters import STORAGE_BYTES, WORKSPACE_SECONDS
from metering.models import UsageNotice
from tenants import policy
from tenants.events import event_emit


def _human_duration(seconds):
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = seconds // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def entitlement_check(*, tenant, now=None):
    """Raise QuotaExceeded if `tenant` may not open a workspace now; return None if it may.

    Checks, in order: the tenant is active, the daily allowance, the monthly allowance (unless the plan allows
    paid overage), and the storage cap (over it, new opens are refused; nothing is deleted and running sessions
    go on). The number of concurrent workspaces is the workspaces app's check
    (`tenants.policy.concurrent_workspaces_check`): only it sees the running sessions.
    """
    now = now or timezone.now()
    policy.require_active(tenant, doing="no workspace can be opened.")
    plan = tenant.plan
    upgrade_url = settings.METERING_UPGRADE_URL
    allowance = selectors.workspace_allowance(tenant=tenant, now=now)
    # The daily allowance always stops; the monthly one only where the plan has no paid overage.
    for period, spent in (("day", "today's"), ("month", "this month's")):
        left = allowance[period]
        if left and left["remaining"] <= 0 and (period == "day" or not plan.allows_overage):
            raise QuotaExceeded(
                f"{tenant.name} has used {spent} {_human_duration(left['included'])} of workspace time on the "
                f"{plan.name} plan. It resets at {left['resets_at']:%Y-%m-%d %H:%M %Z}; upgrade for more at "
                f"{upgrade_url}",
                meter=WORKSPACE_SECONDS, resets_at=left["resets_at"], upgrade_url=upgrade_url,
                extra={"period": period, "used": left["used"], "included": left["included"]},
            )
    if plan.storage_mb is not None:
        stored = selectors.storage_current(tenant=tenant, now=now)
        cap = plan.storage_mb * 1024 * 1024
        if stored > cap:
            raise QuotaExceeded(
                f"{tenant.name} stores {stored / 1048576:.0f} MB, over the {plan.storage_mb} MB of the {plan.name} "
                f"plan: new workspaces cannot open until files are deleted (nothing is deleted for you). "
                f"Upgrade for more storage at {upgrade_url}",
                meter=STORAGE_BYTES, resets_at=None, upgrade_url=upgrade_url,
                extra={"used": stored, "included": cap},
            )


def usage_thresholds_check(*, tenant, now=None, meters=None):
    """Emit usage.threshold_80 / threshold_100 / overage_started once per tenant, meter and period.

    Runs in the caller's transaction (the notice row and the outbox event commit together). Returns the kinds
    emitted.
    """
    now = now or timezone.now()
    emitted = []
    with transaction.atomic():
        for item in selectors.usage_limits(tenant=tenant, now=now):
            if meters is not None and item["meter"] not in meters:
                continue
            used, included = item["used"], item["included"]
            kinds = []
            if used >= 0.8 * included:
                kinds.append(UsageNotice.Kind.THRESHOLD_80)
            if used >= included:
                kinds.append(UsageNotice.Kind.THRESHOLD_100)
            if used > included and item["overage_allowed"]:
                kinds.append(UsageNotice.Kind.OVERAGE_STARTED)
            for kind in kinds:
                notice_key = dict(tenant=tenant, meter_id=item["meter_id"], period=item["period"],
                                  period_start=item["period_start"], kind=kind)
                if UsageNotice.objects.filter(**notice_key).exists():
                    continue
                try:
                    with transaction.atomic():
                        UsageNotice.objects.create(**notice_key, used=used, included=included)
                except IntegrityError:  # a concurrent check sent it
                    continue
                event_emit(type=str(kind), tenant=tenant, payload={
                    "tenant": tenant.slug, "meter": item["meter"], "period": item["period"],
                    "period_start": item["period_start"].isoformat(), "used": used, "included": included,
                    "resets_at": item["resets_at"].isoformat() if item["resets_at"] else None,
                })
                emitted.append((item["meter"], item["period"], str(kind)))
    return emitted
