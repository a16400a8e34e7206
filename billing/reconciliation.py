"""Reconciliation: per tenant, meter and billing month, what metering counted, what each provider was sent and what it
billed; every difference is a gap (revenue leakage or an overcharge), stored for admin, where staff re-send it.

The three columns, for usage beyond the allowance (what reporting bills), in the meter's unit and in cents:
- metered: the month's roll-up made billable by the plan (`reporting.overage_billable`); synthetic tenants: none;
- reported: the usage events whose delivery to the provider succeeded;
- billed: what the provider says it billed (`BillingProvider.billed_usage`): the invoice lines, Stripe's meter.
Set-based: one aggregate query per column for the whole month, joined in memory; never a query per tenant.
"""
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone

from billing.models import BillingEvent, Delivery, ReconciliationGap, ReportedUsage
from billing.outbox import billing_event_record, deliveries_drain_enqueue, providers_billing, providers_for
from billing.providers import ProviderError, providers_registered
from billing.reporting import overage_amount_cents, overage_billable
from metering import periods
from metering.meters import WORKSPACE_SECONDS
from metering.models import Meter, UsageRollup
from tenants.audit import audit_record
from tenants.exceptions import ServiceError
from tenants.models import Tenant

log = logging.getLogger(__name__)
Kind = ReconciliationGap.Kind
_PERIOD = re.compile(r"(\d{4})-(\d{2})")


def period_parse(text):
    """The billing month written `YYYY-MM`, as its first instant (UTC); a ServiceError for anything else."""
    match = _PERIOD.fullmatch(str(text or "").strip())
    if match and 1 <= int(match[2]) <= 12 and int(match[1]) >= 1970:
        return datetime(int(match[1]), int(match[2]), 1, tzinfo=UTC)
    raise ServiceError(f"The period must be a month written YYYY-MM (e.g. 2026-03), not {text!r}.",
                       code="invalid_period", field="period")


@dataclass
class Comparison:
    """One tenant's meter at one provider in the month: the three columns (billed None: the provider cannot tell)."""

    tenant: Tenant
    meter: str
    provider: str
    metered: int = 0
    metered_cents: int = 0
    reported: int = 0
    reported_cents: int = 0
    billed: int | None = None
    billed_cents: int | None = None

    def gaps(self):
        """[(kind, quantity, amount_cents)]: each pair of neighbouring columns that disagree, in the direction that
        costs money. Over-reporting that was not billed costs nothing, so "reported but not billed" counts only what
        was both metered and reported."""
        found = []
        if self.reported < self.metered:
            found.append((Kind.USED_NOT_REPORTED, self.metered - self.reported,
                          max(0, self.metered_cents - self.reported_cents)))
        if self.billed is not None:
            if self.billed < min(self.reported, self.metered):
                found.append((Kind.REPORTED_NOT_BILLED, min(self.reported, self.metered) - self.billed,
                              max(0, min(self.reported_cents, self.metered_cents) - self.billed_cents)))
            if self.billed > self.metered:
                found.append((Kind.BILLED_NOT_METERED, self.billed - self.metered,
                              max(0, self.billed_cents - self.metered_cents)))
        return found


_ROLLUPS_SQL = """
SELECT r.tenant_id, r.meter_id, r.quantity
  FROM metering_usagerollup r
 WHERE r.period = 'month' AND r.period_start = %s
"""

# Every usage event with a delivery counts its tenant in; only delivered ones count as reported.
_REPORTED_SQL = """
SELECT e.tenant_id, e.meter_id, d.provider,
       COALESCE(SUM(e.quantity) FILTER (WHERE d.state = 'delivered'), 0)::bigint,
       COALESCE(SUM(e.amount_cents) FILTER (WHERE d.state = 'delivered'), 0)::bigint
  FROM billing_billingevent e
  JOIN billing_delivery d ON d.event_id = e.id
 WHERE e.kind = 'usage' AND e.period_start = %s AND e.tenant_id IS NOT NULL AND e.meter_id IS NOT NULL
 GROUP BY e.tenant_id, e.meter_id, d.provider
"""


def reconciliation_compare(*, period_start):
    """The month's comparisons ([Comparison]) and the providers that could not tell what they billed."""
    meters = dict(Meter.objects.values_list("pk", "slug"))
    with connection.cursor() as cursor:
        cursor.execute(_ROLLUPS_SQL, [period_start])
        used = {(tenant_id, meters[meter_id]): quantity for tenant_id, meter_id, quantity in cursor}
        cursor.execute(_REPORTED_SQL, [period_start])
        reported = {(tenant_id, meters[meter_id], provider): (quantity, cents)
                    for tenant_id, meter_id, provider, quantity, cents in cursor}
    tenant_ids = {key[0] for key in used} | {key[0] for key in reported}
    tenants = {tenant.pk: tenant for tenant in Tenant.objects.filter(pk__in=tenant_ids)
               .select_related("plan", "billing_account")}

    rows = {}
    for (tenant_id, meter), quantity in used.items():
        tenant = tenants.get(tenant_id)
        if tenant is None:
            continue  # roll-ups have no database foreign key: a tenant deleted since
        billable = None if tenant.synthetic or meter != WORKSPACE_SECONDS else overage_billable(tenant.plan, quantity)
        if not billable:
            continue
        cents = overage_amount_cents(billable, tenant.plan.overage_price_cents_per_hour)
        for provider in providers_billing(tenant, getattr(tenant, "billing_account", None)):
            rows[tenant_id, meter, provider] = Comparison(tenant, meter, provider, billable, cents)
    for (tenant_id, meter, provider), (quantity, cents) in reported.items():
        row = rows.setdefault((tenant_id, meter, provider), Comparison(tenants[tenant_id], meter, provider))
        row.reported, row.reported_cents = quantity, cents

    unchecked = []
    registered = providers_registered()
    for name in sorted({provider for _, _, provider in rows}):
        asked = {key[0]: row.tenant for key, row in rows.items() if key[2] == name}
        provider = registered.get(name)
        try:
            billed = provider.billed_usage(period_start=period_start, tenants=list(asked.values())) if provider \
                else None
        except ProviderError as exc:
            log.warning("reconciliation: %s cannot tell what it billed for %s: %s", name, f"{period_start:%Y-%m}", exc)
            billed = None
        if billed is None:
            unchecked.append(name)
            continue
        for (tenant_id, meter, provider_name), row in rows.items():
            if provider_name == name:
                row.billed, row.billed_cents = billed.get((tenant_id, meter), (0, 0))
        for (tenant_id, meter), (quantity, cents) in billed.items():
            if quantity and (tenant_id, meter, name) not in rows and tenant_id in tenants:
                rows[tenant_id, meter, name] = Comparison(tenants[tenant_id], meter, name, billed=quantity,
                                                          billed_cents=cents)
    return list(rows.values()), len(tenant_ids), unchecked


def reconciliation_run(*, period_start=None, now=None):
    """Reconcile a billing month (default: the previous one) and replace its stored gaps; returns the report:
    {"period", "tenants", "gaps": [{"tenant", "meter", "provider", "kind", "quantity", "amount_cents"}],
    "revenue_at_risk_cents", "unchecked"} (`unchecked`: providers that could not tell what they billed)."""
    now = now or timezone.now()
    period_start = period_start or periods.previous_month_start(now)
    with transaction.atomic():
        # One run of a month at a time: a second one waits and then replaces the first one's gaps.
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(hashtext('billing.reconciliation'), %s)",
                           [period_start.year * 100 + period_start.month])
        rows, tenant_count, unchecked = reconciliation_compare(period_start=period_start)
        meter_ids = dict(Meter.objects.values_list("slug", "pk"))
        gaps = [
            ReconciliationGap(tenant=row.tenant, tenant_slug=row.tenant.slug, meter_id=meter_ids[row.meter],
                              period_start=period_start, provider=row.provider, kind=kind, quantity=quantity,
                              amount_cents=cents, currency=row.tenant.plan.currency, found_at=now)
            for row in rows for kind, quantity, cents in row.gaps()
        ]
        gaps.sort(key=lambda gap: (gap.tenant_slug, gap.meter_id, gap.provider, gap.kind))
        ReconciliationGap.objects.filter(period_start=period_start).delete()
        ReconciliationGap.objects.bulk_create(gaps, batch_size=1000)
    slugs = {pk: slug for slug, pk in meter_ids.items()}
    return {
        "period": f"{period_start:%Y-%m}",
        "tenants": tenant_count,
        "gaps": [{"tenant": gap.tenant_slug, "meter": slugs[gap.meter_id], "provider": gap.provider,
                  "kind": str(gap.kind), "quantity": gap.quantity, "amount_cents": gap.amount_cents} for gap in gaps],
        "revenue_at_risk_cents": sum(gap.amount_cents for gap in gaps),
        "unchecked": unchecked,
    }


def reconciliation_nightly(*, now=None):
    """The nightly run: the previous billing month (final after its late-event grace) and the open one (what is
    late right now); returns both reports."""
    now = now or timezone.now()
    months = [periods.previous_month_start(now), periods.month_bounds(now)[0]]
    return [reconciliation_run(period_start=month, now=now) for month in months]


def revenue_at_risk():
    """What the stored gaps of every reconciled month add up to: {"cents", "gaps", "months": [(month, cents)]}."""
    months = (ReconciliationGap.objects.values("period_start").annotate(cents=Sum("amount_cents"))
              .order_by("-period_start"))
    months = [(row["period_start"], row["cents"]) for row in months]
    return {"cents": sum(cents for _, cents in months), "gaps": ReconciliationGap.objects.count(), "months": months}


def reconciliation_gap_resend(*, gap, actor, now=None):
    """Re-send what a gap is missing, in one transaction with its audit row; the drain delivers after commit and the
    next reconciliation of the month finds the gap closed.

    Used but not reported: the month's missing billable usage becomes a billing event (under the watermark's lock,
    as reporting takes it), and the provider's undelivered deliveries of the month are made due now (or made, where
    an event has none). Reported but not billed: a correction event of the gap's quantity to that provider alone.
    Billed but not metered cannot be re-sent: the tenant is owed a credit at the provider.
    """
    if gap.kind == Kind.BILLED_NOT_METERED:
        raise ServiceError(f"{gap}: billed beyond what was metered; nothing to re-send (credit the tenant at the "
                           f"provider).", code="not_resendable")
    if gap.tenant_id is None:
        raise ServiceError(f"{gap}: the tenant is gone.", code="tenant_gone")
    now = now or timezone.now()
    with transaction.atomic():
        gap = (ReconciliationGap.objects.select_for_update(of=("self",)).select_related("tenant__plan", "meter")
               .get(pk=gap.pk))
        if gap.resent_at is not None:
            raise ServiceError(f"{gap}: re-sent already at {gap.resent_at:%Y-%m-%d %H:%M} UTC; the next "
                               f"reconciliation tells whether it closed.", code="already_resent")
        if gap.kind == Kind.USED_NOT_REPORTED:
            outcome = _resend_unreported(gap, now)
        else:
            outcome = _resend_unbilled(gap)
        audit_record(tenant=gap.tenant, actor=actor, action="billing.gap_resent",
                     target=f"{gap.meter.slug}:{gap.period_start:%Y-%m}:{gap.provider}",
                     data={"gap": gap.pk, "kind": str(gap.kind), "quantity": gap.quantity,
                           "amount_cents": gap.amount_cents, **outcome})
        gap.resent_at = now
        gap.save(update_fields=["resent_at"])
        transaction.on_commit(deliveries_drain_enqueue)
    return outcome


def _resend_unreported(gap, now):
    tenant, meter, month = gap.tenant, gap.meter, gap.period_start
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO billing_reportedusage (tenant_id, meter_id, period_start, quantity, amount_cents, updated_at)"
            " VALUES (%s, %s, %s, 0, 0, now()) ON CONFLICT (tenant_id, meter_id, period_start) DO NOTHING",
            [tenant.pk, meter.pk, month])
    mark = ReportedUsage.objects.select_for_update().get(tenant=tenant, meter=meter, period_start=month)
    events = BillingEvent.objects.filter(tenant=tenant, meter=meter, period_start=month, kind=BillingEvent.Kind.USAGE)
    recorded = events.aggregate(quantity=Sum("quantity"), cents=Sum("amount_cents"))
    recorded_quantity, recorded_cents = recorded["quantity"] or 0, recorded["cents"] or 0
    used = (UsageRollup.objects.filter(tenant=tenant, meter=meter, period="month", period_start=month)
            .values_list("quantity", flat=True).first() or 0)
    billable = (overage_billable(tenant.plan, used) or 0) if meter.slug == WORKSPACE_SECONDS else 0
    price = tenant.plan.overage_price_cents_per_hour or 0
    recorded_event = None
    if billable > recorded_quantity:
        base = f"usage:t{tenant.pk}:{meter.slug}:{month:%Y-%m}:{billable}"
        for identifier in (base, f"{base}:resent:{recorded_quantity}"):
            recorded_event = billing_event_record(
                tenant=tenant, kind=BillingEvent.Kind.USAGE, meter=meter, period_start=month,
                quantity=billable - recorded_quantity, cumulative=billable, identifier=identifier,
                amount_cents=max(0, overage_amount_cents(billable, price) - recorded_cents),
                description=f"Workspace time not reported before, {month:%B %Y}", providers=providers_for(tenant))
            if recorded_event is not None:
                break
        if mark.quantity < billable:
            mark.quantity, mark.amount_cents = billable, overage_amount_cents(billable, price)
            mark.save(update_fields=["quantity", "amount_cents", "updated_at"])
    due = (Delivery.objects.filter(event__in=events, provider=gap.provider)
           .exclude(state=Delivery.State.DELIVERED).update(state=Delivery.State.PENDING, attempts=0,
                                                           next_attempt_at=now))
    provider = providers_registered().get(gap.provider)
    missing = [Delivery(event=event, provider=gap.provider, next_attempt_at=now)
               for event in events.exclude(deliveries__provider=gap.provider)
               if provider is None or provider.accepts(event)]
    Delivery.objects.bulk_create(missing)
    return {"event": recorded_event.identifier if recorded_event else None, "deliveries_due": due + len(missing)}


def _resend_unbilled(gap):
    event = billing_event_record(
        tenant=gap.tenant, kind=BillingEvent.Kind.USAGE, meter=gap.meter, period_start=gap.period_start,
        quantity=gap.quantity, amount_cents=gap.amount_cents, providers=[gap.provider],
        identifier=f"usage:t{gap.tenant_id}:{gap.meter.slug}:{gap.period_start:%Y-%m}:resent:{gap.pk}",
        description=f"Workspace time reported but not billed, {gap.period_start:%B %Y}")
    return {"event": event.identifier if event else None, "deliveries_due": 1 if event else 0}
