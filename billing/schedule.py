"""Billing's periodic ticks, for the lead to merge into CELERY_BEAT_SCHEDULE (billing does not edit config/)."""
from datetime import timedelta

from celery.schedules import schedule

BILLING_BEAT_SCHEDULE = {
    "billing-deliveries-drain": {"task": "billing.tasks.deliveries_drain", "schedule": schedule(timedelta(seconds=10))},
    "billing-usage-report": {"task": "billing.tasks.usage_report", "schedule": schedule(timedelta(minutes=15))},
    # Hourly and idempotent: the first run after a month's late-event grace (48 h) issues its invoices.
    "billing-invoices-issue": {"task": "billing.tasks.invoices_issue", "schedule": schedule(timedelta(hours=1))},
}
