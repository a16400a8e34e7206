"""The billing-event outbox: recording billable facts with one delivery per provider, and draining deliveries.

Settings (config/settings/base.py's billing block): `BILLING_DELIVERY_MAX_ATTEMPTS`,
`BILLING_DELIVERY_BACKOFF_BASE` / `_MAX`, `BILLING_DRAIN_BATCH`, `BILLING_DRAIN_TIME_BUDGET`,
`BILLING_DRAIN_CONCURRENCY`.
"""
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from billing import metrics
from billing.models import BillingAccount, BillingEvent, Delivery, Provider
from billing.providers import PermanentError, TransientError, provider_get, providers_registered
from tenants.audit import audit_record

log = logging.getLogger(__name__)


def providers_for(tenant):
    """The providers billing a tenant (see `providers_billing`)."""
    return providers_billing(tenant, BillingAccount.objects.filter(tenant=tenant).first())


def providers_billing(tenant, account):
    """The providers billing a tenant with this account (None: it has none): the account's, else Stripe for a priced
    plan and invoices for a custom one."""
    if account is not None:
        return list(account.providers)
    return [Provider.STRIPE] if tenant.plan.monthly_price_cents is not None else [Provider.INVOICE]


def billing_event_record(*, tenant, kind, period_start, quantity, amount_cents, identifier, meter=None,
                         description="", currency=None, providers=None, cumulative=None):
    """Store a billing event and a pending delivery per provider that bills it, in the caller's transaction.

    Idempotent on `identifier`: a fact already recorded returns None and nothing is added. A drain is enqueued
    once the transaction commits (never before: a worker must find the rows).
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("billing_event_record must run inside the transaction of the fact it records")
    try:
        with transaction.atomic():
            event = BillingEvent.objects.create(
                tenant=tenant, tenant_slug=tenant.slug, kind=kind, meter=meter, period_start=period_start,
                quantity=quantity, amount_cents=amount_cents, currency=currency or tenant.plan.currency,
                identifier=identifier, description=description[:200], cumulative=cumulative,
            )
    except IntegrityError:
        if BillingEvent.objects.filter(identifier=identifier).exists():
            return None
        raise
    registered = providers_registered()
    names = providers if providers is not None else providers_for(tenant)
    Delivery.objects.bulk_create([
        Delivery(event=event, provider=name, next_attempt_at=event.created_at)
        for name in names if name not in registered or registered[name].accepts(event)
    ])
    transaction.on_commit(deliveries_drain_enqueue)
    return event


_last_enqueue = {"at": float("-inf")}
ENQUEUE_DEBOUNCE = 1.0  # seconds: a report committing many tenants' events enqueues one drain, not one per event


def deliveries_drain_enqueue():
    from billing.tasks import deliveries_drain as task

    if time.monotonic() - _last_enqueue["at"] < ENQUEUE_DEBOUNCE:
        return  # a drain enqueued just now takes these too, or the periodic drain does within its interval
    _last_enqueue["at"] = time.monotonic()
    try:
        task.delay()
    except Exception:  # broker down: the beat's periodic drain delivers later
        log.warning("could not enqueue the billing drain; the periodic drain will deliver", exc_info=True)


def backoff(attempts):
    """The wait after the `attempts`-th failure: base × 2^(attempts − 1), capped."""
    base = settings.BILLING_DELIVERY_BACKOFF_BASE
    cap = settings.BILLING_DELIVERY_BACKOFF_MAX
    return timedelta(seconds=min(cap, base * 2 ** max(0, attempts - 1)))


def deliveries_drain(*, batch_size=None, now=None):
    """Deliver due pending deliveries. Safe to run in several workers at once and to repeat.

    Each batch is claimed with `SELECT … FOR UPDATE SKIP LOCKED` and stays locked while its deliveries are made,
    then their outcome is written in the same transaction. A worker dying mid-batch rolls the batch back: the
    rows are pending again and the next drain repeats them with the same idempotency keys, which the providers
    answer with what they already recorded. Returns the number of deliveries that succeeded.
    """
    batch_size = batch_size or settings.BILLING_DRAIN_BATCH
    deadline = time.monotonic() + settings.BILLING_DRAIN_TIME_BUDGET
    delivered = 0
    while time.monotonic() < deadline:
        moment = now or timezone.now()
        with transaction.atomic():
            batch = list(
                Delivery.objects.select_for_update(skip_locked=True, of=("self",))
                .filter(state=Delivery.State.PENDING, next_attempt_at__lte=moment)
                .select_related("event__tenant__billing_account", "event__meter")
                .order_by("next_attempt_at", "pk")[:batch_size]
            )
            if not batch:
                return delivered
            done = _deliver_batch(batch, now=moment, deadline=deadline)
            _save_outcomes(done)
            delivered += sum(1 for d in done if d.state == Delivery.State.DELIVERED)
        metrics.deliveries_record(done)  # committed: counted once, never for a batch that rolled back
        if len(batch) < batch_size:
            return delivered
    return delivered


_OUTCOMES_SQL = """
UPDATE billing_delivery AS d
   SET state = o.state, attempts = o.attempts, next_attempt_at = o.next_attempt_at, last_error = o.last_error,
       reference = o.reference, delivered_at = o.delivered_at
  FROM unnest(%s::bigint[], %s::varchar[], %s::integer[], %s::timestamptz[], %s::text[], %s::varchar[],
              %s::timestamptz[]) AS o(id, state, attempts, next_attempt_at, last_error, reference, delivered_at)
 WHERE d.id = o.id
"""


def _save_outcomes(deliveries):
    """One statement for the whole batch (`bulk_update`'s CASE per field and row cost more than the HTTP calls)."""
    if not deliveries:
        return
    columns = ("pk", "state", "attempts", "next_attempt_at", "last_error", "reference", "delivered_at")
    with connection.cursor() as cursor:
        cursor.execute(_OUTCOMES_SQL, [[getattr(d, column) for d in deliveries] for column in columns])


_pool = {"executor": None, "key": None}


def _executor(width):
    """Threads for remote providers' calls, made per process (a forked worker must not inherit its parent's)."""
    if _pool["key"] != (os.getpid(), width):
        _pool["executor"] = ThreadPoolExecutor(max_workers=width, thread_name_prefix="billing-delivery")
        _pool["key"] = (os.getpid(), width)
    return _pool["executor"]


def _deliver_batch(batch, *, now, deadline):
    """Attempt each delivery of a locked batch; returns those changed (attempted or deferred).

    Up to BILLING_DRAIN_CONCURRENCY deliveries are in flight at once: a remote provider's calls overlap in threads,
    while a provider writing Hearth's tables runs in this thread, inside the batch's transaction.
    """
    width = max(1, settings.BILLING_DRAIN_CONCURRENCY)
    failing = {}  # provider -> the next attempt time of its delivery that just failed transiently
    done = []
    queue = list(batch)
    while queue and time.monotonic() < deadline:  # what is left after the deadline waits for the next drain
        wave = []
        while queue and len(wave) < width:
            delivery = queue.pop(0)
            if delivery.provider in failing:
                # The provider is failing now: the rest of its batch waits with the failed delivery instead of each
                # being tried (and counted) in turn, and other providers' deliveries are not held up behind them.
                delivery.next_attempt_at = failing[delivery.provider]
                done.append(delivery)
            else:
                wave.append(delivery)
        remote = [d for d in wave if not _writes_database(d.provider)]
        if len(remote) > 1:
            list(_executor(width).map(lambda d: _attempt(d, now=now), remote))
        elif remote:
            _attempt(remote[0], now=now)
        in_threads = {id(d) for d in remote}
        for delivery in wave:
            if id(delivery) not in in_threads:
                _attempt(delivery, now=now)
            if delivery.state == Delivery.State.PENDING:
                failing.setdefault(delivery.provider, delivery.next_attempt_at)
        done.extend(wave)
    return done


def _writes_database(name):
    provider = providers_registered().get(name)
    return provider is None or provider.writes_database


def _attempt(delivery, *, now):
    delivery.attempts += 1
    try:
        provider = provider_get(delivery.provider)
        if provider.writes_database:
            with transaction.atomic():  # what a failing delivery wrote is undone alone, not the batch
                reference = provider.deliver(delivery.event, idempotency_key=delivery.idempotency_key)
        else:
            reference = provider.deliver(delivery.event, idempotency_key=delivery.idempotency_key)
    except PermanentError as exc:
        delivery.state, delivery.last_error = Delivery.State.DEAD, f"permanent: {exc}"[:4000]
        log.warning("billing delivery %s to %s dead: %s", delivery.pk, delivery.provider, exc)
        return
    except Exception as exc:  # transient, or a bug a deploy may fix: retried, then dead-lettered
        kind = "transient" if isinstance(exc, TransientError) else type(exc).__name__
        delivery.last_error = f"{kind}: {exc}"[:4000]
        if delivery.attempts >= settings.BILLING_DELIVERY_MAX_ATTEMPTS:
            delivery.state = Delivery.State.DEAD
            log.warning("billing delivery %s to %s dead after %s attempts: %s",
                        delivery.pk, delivery.provider, delivery.attempts, exc)
        else:
            delivery.next_attempt_at = now + backoff(delivery.attempts)
        return
    delivery.state, delivery.reference = Delivery.State.DELIVERED, str(reference or "")[:255]
    delivery.delivered_at, delivery.last_error = now, ""


def deliveries_retry(*, delivery_ids, actor):
    """Make dead (or waiting) deliveries due now with a fresh count of attempts: staff's "retry" in admin.

    Delivered ones are left alone. Each retried delivery leaves an audit row in this transaction; a drain is
    enqueued once it commits. Returns how many were made due.
    """
    with transaction.atomic():
        rows = list(
            Delivery.objects.select_for_update(of=("self",)).filter(pk__in=list(delivery_ids))
            .exclude(state=Delivery.State.DELIVERED).select_related("event__tenant").order_by("pk")
        )
        now = timezone.now()
        for delivery in rows:
            audit_record(tenant=delivery.event.tenant, actor=actor, action="billing.delivery_retried",
                         target=delivery.idempotency_key,
                         data={"delivery": delivery.pk, "state": delivery.state, "attempts": delivery.attempts,
                               "last_error": delivery.last_error[:500]})
            delivery.state, delivery.attempts, delivery.next_attempt_at = Delivery.State.PENDING, 0, now
        Delivery.objects.bulk_update(rows, ["state", "attempts", "next_attempt_at"])
        if rows:
            transaction.on_commit(deliveries_drain_enqueue)
    return len(rows)
