"""Domain events through the outbox: written with the change, delivered by Celery, each consumer at most once.

A consumer is a function `handler(event)` registered for one or more event types. It must be idempotent
with respect to `event.id` for side effects outside the database (a provider call takes the event id as
its idempotency key); a consumer that raises is retried with back-off and the others are not repeated.
"""
import logging
from collections import defaultdict
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from tenants.models import OutboxEvent

log = logging.getLogger(__name__)

_consumers = defaultdict(dict)  # event type ("*" for all) -> {consumer name: handler}

MAX_BACKOFF = timedelta(minutes=30)


def consumer(*event_types, name=None):
    """Register a function as a consumer of the given event types (`"*"` for every type)."""

    def register(fn):
        key = name or f"{fn.__module__}.{fn.__qualname__}"
        for event_type in event_types:
            _consumers[event_type][key] = fn
        return fn

    return register


def consumers_for(event_type):
    return {**_consumers.get("*", {}), **_consumers.get(event_type, {})}


def event_emit(*, type, tenant=None, payload=None):
    """Store a domain event in the caller's transaction; a drain is enqueued once it commits."""
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("event_emit must run inside the transaction of the change it announces")
    event = OutboxEvent.objects.create(
        type=type, tenant=tenant, tenant_slug=tenant.slug if tenant else "", payload=payload or {}
    )
    transaction.on_commit(_enqueue_drain)
    return event


def _enqueue_drain():
    from tenants.tasks import outbox_drain

    try:
        outbox_drain.delay()
    except Exception:  # broker down: the beat's periodic drain picks the event up later
        log.warning("could not enqueue outbox drain; the periodic drain will deliver", exc_info=True)


def outbox_drain(*, batch_size=100, now=None):
    """Deliver pending events to their consumers. Safe to run concurrently and to repeat.

    Returns the number of events fully dispatched in this call.
    """
    now = now or timezone.now()
    dispatched = 0
    while True:
        with transaction.atomic():
            pending = (
                OutboxEvent.objects.select_for_update(skip_locked=True)
                .filter(dispatched_at__isnull=True)
                .exclude(next_attempt_at__gt=now)
                .order_by("created_at", "pk")[:batch_size]
            )
            events = list(pending)
            if not events:
                return dispatched
            for event in events:
                if _deliver(event, now=now):
                    dispatched += 1
        if len(events) < batch_size:
            return dispatched


def _deliver(event, *, now):
    errors = []
    for key, handler in consumers_for(event.type).items():
        if key in event.delivered_to:
            continue
        try:
            with transaction.atomic():
                handler(event)
        except Exception as exc:  # one failing consumer must not block or repeat the others
            log.exception("outbox consumer %s failed on %s %s", key, event.type, event.id)
            errors.append(f"{key}: {exc!r}")
        else:
            event.delivered_to = [*event.delivered_to, key]
    event.attempts += 1
    if errors:
        event.last_error = "\n".join(errors)[:4000]
        event.next_attempt_at = now + min(MAX_BACKOFF, timedelta(seconds=2**event.attempts))
    else:
        event.dispatched_at = now
        event.last_error = ""
    event.save(update_fields=["delivered_to", "attempts", "last_error", "next_attempt_at", "dispatched_at"])
    return not errors


def outbox_retry(*, event_ids):
    """Make undelivered events due now (staff's "retry" in admin) and enqueue a drain once that commits.

    Delivered events are left alone: consumers that handled an event never see it twice.
    Returns how many events were made due.
    """
    with transaction.atomic():
        due = OutboxEvent.objects.filter(pk__in=list(event_ids), dispatched_at__isnull=True).update(
            next_attempt_at=None
        )
        if due:
            transaction.on_commit(_enqueue_drain)
    return due
