"""What metering contributes to offboarding: the usage history in the archive, events kept after deletion."""
from metering.models import UsageEvent, UsageRollup
from tenants.offboarding import exporter, on_teardown


@exporter("usage")
def usage_export(tenant):
    """Monthly totals per meter: what the tenant was billed on."""
    return [
        {"meter": meter, "month": start.date().isoformat(), "quantity": quantity, "events": count}
        for meter, start, quantity, count in UsageRollup.objects.filter(tenant=tenant, period="month")
        .order_by("period_start", "meter__slug")
        .values_list("meter__slug", "period_start", "quantity", "event_count")
    ]


@on_teardown
def usage_detach(tenant):
    """Usage events are money records: they stay, keyed by the tenant's slug, when the tenant row goes."""
    UsageEvent.objects.filter(tenant=tenant).update(tenant=None)
