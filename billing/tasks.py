"""Celery tasks of billing: thin periodic loops over its services (usage reports, deliveries, invoice issue, the end
of a past-due grace period, the nightly reconciliation)."""
from celery import shared_task

from billing import services


@shared_task(acks_late=True, ignore_result=True)
def deliveries_drain():
    """Deliver due billing events to their providers; safe to repeat and to run in several workers."""
    return services.deliveries_drain()


@shared_task(acks_late=True, ignore_result=True)
def usage_report():
    """Turn billable usage since the last report into billing events; idempotent (watermarks)."""
    return services.usage_report()


@shared_task(acks_late=True, ignore_result=True)
def invoices_issue():
    """Issue the drafts of billing months past their late-event grace; idempotent."""
    return len(services.invoices_issue())


@shared_task(acks_late=True, ignore_result=True)
def payment_grace_expire():
    """Suspend for payment the past-due tenants whose grace ran out; idempotent."""
    return services.payment_grace_expire()


@shared_task(acks_late=True, ignore_result=True)
def reconcile():
    """Reconcile the previous and the open billing month (their gaps replace the stored ones); idempotent."""
    return [report["revenue_at_risk_cents"] for report in services.reconciliation_nightly()]
