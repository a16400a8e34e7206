"""Outbox consumers of metering: membership changes are sampled as seats at once, not at the next hourly tick."""
from metering import services
from tenants.events import consumer
from tenants.models import Tenant


@consumer("tenant.onboarded", "member.joined", "member.removed", name="metering.seats")
def seats_on_membership_change(event):
    tenant = Tenant.objects.exclude(status=Tenant.Status.OFFBOARDED).filter(pk=event.tenant_id).first()
    if tenant is not None:  # offboarded or gone meanwhile: nothing to count
        services.seats_sample(tenant=tenant)
