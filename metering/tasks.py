"""Celery tasks of metering: thin periodic loops over services (notices, storage and seat samples)."""
import logging

from celery import shared_task
from django.utils import timezone

from metering import metrics, services
from metering.models import UsageRollup
from tenants.models import Tenant

log = logging.getLogger(__name__)


@shared_task(acks_late=True, ignore_result=True)
@metrics.sampler("thresholds")
def usage_thresholds_scan(window_minutes=10):
    """Emit threshold notices for tenants whose roll-ups changed recently; idempotent (notices are remembered)."""
    since = timezone.now() - timezone.timedelta(minutes=window_minutes)
    tenant_ids = UsageRollup.objects.filter(updated_at__gte=since).values_list("tenant_id", flat=True).distinct()
    emitted = 0
    for tenant in Tenant.objects.filter(pk__in=tenant_ids, status=Tenant.Status.ACTIVE).select_related("plan"):
        emitted += len(services.usage_thresholds_check(tenant=tenant))
    return emitted


@shared_task(acks_late=True, ignore_result=True)
def storage_sample_all():
    for tenant_id in Tenant.objects.exclude(status=Tenant.Status.OFFBOARDED).values_list("pk", flat=True):
        storage_sample.delay(tenant_id)


@shared_task(acks_late=True, ignore_result=True)
def storage_sample(tenant_id):
    tenant = Tenant.objects.filter(pk=tenant_id).first()
    if tenant is not None:
        services.storage_sample(tenant=tenant)


@shared_task(acks_late=True, ignore_result=True)
def seats_sample_all():
    for tenant in Tenant.objects.exclude(status=Tenant.Status.OFFBOARDED):
        services.seats_sample(tenant=tenant)
