"""Celery tasks of the tenants app: thin wrappers around services."""
from celery import shared_task

from tenants import events


@shared_task(acks_late=True, ignore_result=True)
def outbox_drain():
    """Deliver pending domain events; safe to repeat (deliveries are recorded per consumer)."""
    return events.outbox_drain()
