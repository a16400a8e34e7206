"""What enters the billing queue: usage beyond the plan's allowance and the plan's fixed fee, from the roll-ups.

Roll-ups are metering's truth. Each report turns what is billable now for a tenant, meter and billing month into
a billing event of the delta since the last report, and advances that watermark (`ReportedUsage`) in the same
transaction, so a crash can neither lose nor double a delta. Event identifiers carry the cumulative quantity
they bring the month to, so a repeated report (or a concurrent one) can never charge a quantity twice.
"""
from django.db import connection, transaction
from django.utils import timezone

from billing.models import BillingAccount, BillingEvent, ReportedUsage
from billing.outbox import billing_event_record, providers_for
from billing.providers import providers_registered
from billing.selectors import monthly_fee_cents
from metering import periods
from metering.meters import WORKSPACE_SECONDS
from metering.models import Meter, UsageRollup
from metering.selectors import included
from tenants.models import Tenant

SECONDS_PER_HOUR = 3600


def overage_amount_cents(seconds, cents_per_hour):
    """What `seconds` of overage cost, rounded down to the cent; amounts of deltas are differences of these, so
    they add up to exactly the month's total whatever the reporting rhythm."""
    return seconds * cents_per_hour // SECONDS_PER_HOUR


def overage_billable(plan, used):
    """The billable part of a month's workspace seconds on `plan` (beyond its monthly hours), or None where the plan
    bills no overage (no overage price or no allowance). Reporting and reconciliation both apply this rule."""
    price = plan.overage_price_cents_per_hour
    allowance = included(plan, WORKSPACE_SECONDS, "month")
    if price is None or allowance is None:
        return None
    return max(0, used - allowance)


def _hours(seconds):
    minutes = seconds // 60
    return f"{minutes // 60} h {minutes % 60:02d} min"


def usage_report(*, now=None):
    """Report every billable tenant (see `usage_report_tenant`); returns the number of billing events created."""
    now = now or timezone.now()
    tenants = (Tenant.objects.filter(synthetic=False).exclude(status=Tenant.Status.OFFBOARDED)
               .select_related("plan").order_by("pk"))
    return sum(len(usage_report_tenant(tenant=tenant, now=now)) for tenant in tenants)


def _months(now):
    """The billing months still reported: the open one, and the previous one (late events during its grace, then
    one last report that finds it final)."""
    current, _ = periods.month_bounds(now)
    return [periods.previous_month_start(now), current]


def usage_report_tenant(*, tenant, now=None):
    """Create the tenant's billing events for what became billable since the last report. Idempotent.

    Billable: workspace time beyond the plan's monthly hours at `Plan.overage_price_cents_per_hour`, and the
    plan's (or contract's) monthly fee for providers that bill it (the invoice provider; Stripe's subscription
    bills its own fee). Returns the events created.
    """
    now = now or timezone.now()
    created = []
    with transaction.atomic():
        created += _fees(tenant, now)
        created += _overage(tenant, now)
    return created


def _fees(tenant, now):
    names = providers_for(tenant)
    registered = providers_registered()
    fee = monthly_fee_cents(
        plan_price_cents=tenant.plan.monthly_price_cents,
        contract_cents=BillingAccount.objects.filter(tenant=tenant).values_list("fixed_fee_cents", flat=True).first())
    if not fee:
        return []
    probe = BillingEvent(kind=BillingEvent.Kind.PLAN_FEE)
    if not any(name in registered and registered[name].accepts(probe) for name in names):
        return []
    month, _ = periods.month_bounds(now)
    event = billing_event_record(
        tenant=tenant, kind=BillingEvent.Kind.PLAN_FEE, period_start=month, quantity=1, amount_cents=fee,
        identifier=f"fee:t{tenant.pk}:{month:%Y-%m}", description=f"{tenant.plan.name} plan, {month:%B %Y}",
        providers=names,
    )
    return [event] if event else []


def _overage(tenant, now):
    plan = tenant.plan
    price = plan.overage_price_cents_per_hour
    if overage_billable(plan, 0) is None:
        return []
    meter = Meter.objects.get(slug=WORKSPACE_SECONDS)
    months = _months(now)
    with connection.cursor() as cursor:
        # The watermark rows exist before they are locked, so concurrent reports queue on them (key order).
        cursor.executemany(
            "INSERT INTO billing_reportedusage (tenant_id, meter_id, period_start, quantity, amount_cents, updated_at)"
            " VALUES (%s, %s, %s, 0, 0, now()) ON CONFLICT (tenant_id, meter_id, period_start) DO NOTHING",
            [(tenant.pk, meter.pk, month) for month in months],
        )
    marks = list(ReportedUsage.objects.select_for_update()
                 .filter(tenant=tenant, meter=meter, period_start__in=months).order_by("pk"))
    used = dict(UsageRollup.objects.filter(tenant=tenant, meter=meter, period="month", period_start__in=months)
                .values_list("period_start", "quantity"))
    names = providers_for(tenant)
    created = []
    for mark in marks:
        billable = overage_billable(plan, used.get(mark.period_start, 0))
        if billable <= mark.quantity:
            continue  # nothing new (an upgrade that raised the allowance is not credited back here)
        amount = overage_amount_cents(billable, price) - overage_amount_cents(mark.quantity, price)
        delta = billable - mark.quantity
        event = billing_event_record(
            tenant=tenant, kind=BillingEvent.Kind.USAGE, meter=meter, period_start=mark.period_start,
            quantity=delta, amount_cents=amount, providers=names, cumulative=billable,
            identifier=f"usage:t{tenant.pk}:{meter.slug}:{mark.period_start:%Y-%m}:{billable}",
            description=f"Workspace time beyond {plan.monthly_hours} h, {mark.period_start:%B %Y}: "
                        f"{_hours(delta)} at {price // 100}.{price % 100:02d} {plan.currency.upper()}/h",
        )
        if event is not None:
            created.append(event)
        mark.quantity = billable
        mark.amount_cents += amount
        mark.save(update_fields=["quantity", "amount_cents", "updated_at"])
    return created
