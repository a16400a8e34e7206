"""Recording usage exactly once: the ingestion statement and its paths (API, bulk, sessions, egress, corrections).

The exactly-once core is one SQL statement (`_INGEST_SQL`): events are inserted with ON CONFLICT (event_id)
DO NOTHING RETURNING, and only the rows actually returned are added to the roll-ups, in the same statement and
so the same transaction. Events are inserted in event-id order and roll-ups upserted in key order, so
concurrent batches wait for each other instead of deadlocking.
"""
import math
import operator
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import DataError, transaction
from django.utils import timezone

from config import db
from metering import metrics, periods
from metering.batches import usage_events_prepare
from metering.entitlements import usage_thresholds_check
from metering.meters import EGRESS_BYTES, PLATFORM_METERS, WORKSPACE_SECONDS, meter_get
from metering.models import Meter, UsageEvent, UsageRollup
from tenants.audit import audit_record
from tenants.exceptions import Forbidden, ServiceError
from tenants.models import Tenant

# The batch arrives as one array per column (binary parameters: no per-value formatting or parsing, no temporary
# table); source, reason and actor are one value for the whole batch unless a batch mixes them.
_SOURCE_ARRAYS = """
    SELECT * FROM unnest(%b::text[], %b::int8[], %b::text[], %b::int8[], %b::int8[], %b::text[], %b::timestamptz[])
        AS s(event_id, tenant_id, tenant_slug, meter_id, quantity, subject, "timestamp")
"""
_SOURCE_ARRAYS_MIXED = """
    SELECT * FROM unnest(%b::text[], %b::int8[], %b::text[], %b::int8[], %b::int8[], %b::text[], %b::timestamptz[],
                         %b::text[], %b::text[], %b::int8[])
        AS s(event_id, tenant_id, tenant_slug, meter_id, quantity, subject, "timestamp", source, reason, actor_id)
"""

_INGEST_SQL = """
WITH ins AS (
    INSERT INTO metering_usageevent
        (event_id, tenant_id, tenant_slug, meter_id, quantity, subject, "timestamp", source, reason, actor_id)
    SELECT event_id, tenant_id, tenant_slug, meter_id, quantity, subject::jsonb, "timestamp", {batch_columns}
    FROM ({source}) AS src
    ORDER BY event_id COLLATE "C"
    ON CONFLICT (event_id) DO NOTHING
    RETURNING tenant_id, meter_id, quantity, "timestamp"
),
stamped AS (
    -- The tenant's day (its time zone; UTC without settings) and the UTC billing month of each new event.
    SELECT ins.tenant_id, ins.meter_id, ins.quantity, ins."timestamp",
           CASE WHEN tms.timezone IS NULL THEN date_trunc('day', ins."timestamp", 'UTC')
                ELSE date_trunc('day', ins."timestamp", tms.timezone) END AS day_start,
           date_trunc('month', ins."timestamp", 'UTC') AS month_start
    FROM ins LEFT JOIN metering_tenantmeteringsettings tms ON tms.tenant_id = ins.tenant_id
),
periods AS (
    SELECT tenant_id, meter_id, period, period_start, quantity, "timestamp",
           -- The latest sample of each period (a gauge's current value): one sort for the batch, where an
           -- ordered aggregate would sort each group apart.
           first_value(quantity) OVER (PARTITION BY tenant_id, meter_id, period, period_start
                                       ORDER BY "timestamp" DESC, quantity DESC) AS latest
    FROM (SELECT stamped.tenant_id, stamped.meter_id, stamped.quantity, stamped."timestamp", p.period,
                 CASE p.period WHEN 'day' THEN stamped.day_start ELSE stamped.month_start END AS period_start
          FROM stamped CROSS JOIN (VALUES ('day'), ('month')) AS p(period)) AS each_period
),
agg AS (
    SELECT tenant_id, meter_id, period, period_start,
           sum(quantity) AS total, max(quantity) AS peak, count(*) AS n, max("timestamp") AS last_at,
           max(latest) AS last_quantity
    FROM periods
    GROUP BY tenant_id, meter_id, period, period_start
),
up AS (
    INSERT INTO metering_usagerollup
        (tenant_id, meter_id, period, period_start, aggregation, quantity, event_count, last_quantity, last_at,
         updated_at)
    SELECT agg.tenant_id, agg.meter_id, agg.period, agg.period_start, m.aggregation,
           CASE WHEN m.aggregation = 'max' THEN agg.peak ELSE agg.total END,
           agg.n, agg.last_quantity, agg.last_at, now()
    FROM agg JOIN metering_meter m ON m.id = agg.meter_id
    ORDER BY agg.tenant_id, agg.meter_id, agg.period, agg.period_start
    ON CONFLICT (tenant_id, meter_id, period, period_start) DO UPDATE SET
        quantity = CASE WHEN metering_usagerollup.aggregation = 'max'
                        THEN GREATEST(metering_usagerollup.quantity, EXCLUDED.quantity)
                        ELSE metering_usagerollup.quantity + EXCLUDED.quantity END,
        event_count = metering_usagerollup.event_count + EXCLUDED.event_count,
        last_quantity = CASE WHEN metering_usagerollup.last_at IS NULL
                                  OR EXCLUDED.last_at >= metering_usagerollup.last_at
                             THEN EXCLUDED.last_quantity ELSE metering_usagerollup.last_quantity END,
        last_at = GREATEST(metering_usagerollup.last_at, EXCLUDED.last_at),
        updated_at = now()
    RETURNING 1
)
SELECT (SELECT count(*) FROM ins), (SELECT coalesce(sum(quantity), 0) FROM ins), (SELECT count(*) FROM up),
       -- What was new per tenant and meter, for the metrics (metering.metrics): from the months' groups already made.
       (SELECT json_agg(json_build_array(tenant_id, meter_id, total, n)) FROM agg WHERE period = 'month')
"""
_INGEST_UNIFORM_SQL = _INGEST_SQL.format(source=_SOURCE_ARRAYS, batch_columns="%b::text, %b::text, %b::int8")
_INGEST_MIXED_SQL = _INGEST_SQL.format(source=_SOURCE_ARRAYS_MIXED, batch_columns="source, reason, actor_id")
_event_id_of = operator.itemgetter(0)


@dataclass
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    quantity: int = 0  # the total quantity of the accepted events
    rejected: list = field(default_factory=list)  # [{"id", "code", "reason"}]

    def as_dict(self):
        return {"accepted": self.accepted, "duplicates": self.duplicates, "rejected": self.rejected}


def _ingest_rows(rows):
    """Insert usage_events_prepare's rows; return (events new, their total quantity). One transaction."""
    if not rows:
        return 0, 0
    # Sorted here (stable: the first of an id's copies wins), the statement's ORDER BY finds them in order and
    # PostgreSQL's sort only checks that they are.
    rows = sorted(rows, key=_event_id_of)
    columns = [list(column) for column in zip(*rows, strict=True)]
    source, reason, actor_id = (column[0] for column in columns[7:])
    if all(column.count(column[0]) == len(column) for column in columns[7:]):
        sql, params = _INGEST_UNIFORM_SQL, [source, reason, actor_id, *columns[:7]]
    else:
        sql, params = _INGEST_MIXED_SQL, columns
    # Bound on the server (the arrays go as binary int8/text arrays, not spelt out) and prepared once per connection.
    with transaction.atomic(), db.cursor(int8=True) as cursor:
        cursor.execute(sql, params)
        inserted, quantity, _, totals = cursor.fetchone()
        if totals:
            transaction.on_commit(lambda: metrics.usage_record(totals))
    return inserted, int(quantity)


def usage_record_many(events, *, source=UsageEvent.Source.INTERNAL, now=None, check_window=False):
    """The fast internal bulk path: record many events exactly once; returns an IngestResult.

    Internal callers send valid events: if any is invalid nothing is written and ServiceError says which.
    """
    rows, rejected = usage_events_prepare(events, source=source, now=now, check_window=check_window)
    if rejected:
        first = rejected[0]
        raise ServiceError(f"Usage event {first['id']!r} is invalid: {first['reason']}", code=first["code"],
                           extra={"rejected": rejected})
    inserted, quantity = _ingest_rows(rows)
    return IngestResult(accepted=inserted, duplicates=len(rows) - inserted, quantity=quantity)


ROLLUP_MAX = 2**63 - 1  # a roll-up's bigint


def _overflowed(exc):
    cause = exc.__cause__
    return type(cause).__name__ == "NumericValueOutOfRange" or "out of range" in str(exc)


def _without_overflow(rows):
    """Split rows into (those that fit, rejections of those that would overflow a roll-up's bigint).

    Only after the statement failed on such an overflow (never on the usual path). Conservative: each (tenant,
    meter) starts from its largest open roll-up and every row of the batch is counted, duplicates too.
    """
    keys = {(row[1], row[3]) for row in rows}
    since = min(row[6] for row in rows) - timedelta(days=32)
    base = {}
    for tenant_id, meter_id, quantity in UsageRollup.objects.filter(
            tenant_id__in={key[0] for key in keys}, meter_id__in={key[1] for key in keys},
            period_start__gte=since).values_list("tenant_id", "meter_id", "quantity"):
        base[tenant_id, meter_id] = max(base.get((tenant_id, meter_id), 0), quantity)
    kept, rejected = [], []
    for row in sorted(rows, key=_event_id_of):
        key = (row[1], row[3])
        if row[4] > 0 and base.get(key, 0) + row[4] > ROLLUP_MAX:
            rejected.append({"id": row[0], "code": "quantity_overflow",
                             "reason": "This quantity would take the tenant's total for the meter past "
                                       f"{ROLLUP_MAX}; it is not recorded."})
            continue
        base[key] = base.get(key, 0) + max(row[4], 0)
        kept.append(row)
    return kept, rejected


def usage_ingest(events, *, token, now=None):
    """The ingestion API's path for a service token: bad events, and events outside the token's scope, are rejected
    one by one, the rest recorded exactly once."""
    # The platform's meters are taken out here too, whatever a token row says (it may predate the rule).
    scope = (frozenset(token.meters) - PLATFORM_METERS, frozenset(token.tenant_slugs) or None)
    rows, rejected = usage_events_prepare(events, source=UsageEvent.Source.API, now=now, check_window=True,
                                          scope=scope)
    try:
        inserted, _ = _ingest_rows(rows)
    except DataError as exc:
        # A roll-up would pass bigint: refuse the events that take it there, record the others (one bad event
        # must not cost the batch's other tenants their usage).
        if not _overflowed(exc):
            raise
        rows, overflowing = _without_overflow(rows)
        rejected = rejected + overflowing
        inserted, _ = _ingest_rows(rows)
    return IngestResult(accepted=inserted, duplicates=len(rows) - inserted, rejected=rejected)


def usage_record(*, tenant, meter, quantity, subject=None, timestamp=None, event_id=None,
                 source=UsageEvent.Source.INTERNAL):
    """Record one usage fact in the caller's transaction. Returns True if it counted, False if already stored."""
    result = usage_record_many(
        [{"id": event_id or f"{source}:{uuid.uuid4()}", "tenant": tenant, "meter": meter, "quantity": quantity,
          "timestamp": timestamp or timezone.now(), "subject": subject or {}}],
        source=source,
    )
    return result.accepted == 1


def _epoch_seconds(moment):
    return math.floor(moment.timestamp())


def workspace_seconds_record(*, tenant, session_id, user_id, workspace_id, start, end):
    """Record the whole seconds of [start, end) of a session; returns the seconds newly counted.

    Seconds are counted as floor(end) - floor(start), so consecutive intervals add up exactly to the session's
    length. The interval is split at the tenant's day and the billing month boundaries so each day's allowance
    gets exactly its seconds. Each piece's event id is (session, piece start): a retry never counts twice.
    """
    if end <= start:
        return 0
    cuts = periods.boundaries_between(tenant, start, end)
    edges = [start, *cuts, end]
    subject = {"user": user_id, "workspace": workspace_id, "session": session_id}
    events = []
    for piece_start, piece_end in zip(edges, edges[1:], strict=False):
        seconds = _epoch_seconds(piece_end) - _epoch_seconds(piece_start)
        if seconds <= 0:
            continue
        whole_start = datetime.fromtimestamp(_epoch_seconds(piece_start), UTC)
        events.append({"id": f"ws:{session_id}:{_epoch_seconds(piece_start)}", "tenant": tenant,
                       "meter": WORKSPACE_SECONDS, "quantity": seconds, "timestamp": whole_start,
                       "subject": subject})
    if not events:
        return 0
    with transaction.atomic():
        inserted_seconds = usage_record_many(events, now=max(end, timezone.now())).quantity
        if inserted_seconds:
            usage_thresholds_check(tenant=tenant, now=end, meters=[WORKSPACE_SECONDS])
    return inserted_seconds


def egress_bytes_record(*, tenant, session_id, user_id, workspace_id, source, counted, counter, at):
    """Record the bytes a session's counter `source` went from `counted` to `counter`; returns the bytes newly counted.

    A source's counter only grows (the caller keeps one per gateway generation and per container), so a counter at
    or below `counted` is a stale reading and records nothing. The event id is (session, source, from, to): a retry
    never counts twice.
    """
    quantity = counter - counted
    if quantity <= 0:
        return 0
    event = {"id": f"egress:{session_id}:{source}:{counted}:{counter}", "tenant": tenant, "meter": EGRESS_BYTES,
             "quantity": quantity, "timestamp": at,
             "subject": {"user": user_id, "workspace": workspace_id, "session": session_id, "source": source}}
    with transaction.atomic():
        counted_now = usage_record_many([event], now=at).quantity
        if counted_now:
            usage_thresholds_check(tenant=tenant, now=at, meters=[EGRESS_BYTES])
    return counted_now


def usage_correction_record(*, tenant, meter, quantity, reason, actor, timestamp=None):
    """A staff credit (negative) or debit (positive) on a counter meter, with an audit row. Returns the event."""
    if actor is None or not getattr(actor, "is_staff", False):
        raise Forbidden("Only staff can correct usage.")
    reason = (reason or "").strip()
    if not reason:
        raise ServiceError("A correction needs a reason.", field="reason")
    meter = meter_get(meter)
    if meter.aggregation != Meter.Aggregation.SUM:
        raise ServiceError(f"'{meter.slug}' is a sampled gauge; only counters can be corrected.", field="meter")
    if not isinstance(quantity, int) or quantity == 0:
        raise ServiceError("A correction is a non-zero whole number (negative: a credit).", field="quantity")
    event_id = f"correction:{uuid.uuid4()}"
    with transaction.atomic():
        Tenant.objects.select_for_update().get(pk=tenant.pk)  # serialises corrections with plan changes
        usage_record_many(
            [{"id": event_id, "tenant": tenant, "meter": meter, "quantity": quantity,
              "timestamp": timestamp or timezone.now(), "subject": {"staff": actor.pk}, "reason": reason,
              "actor_id": actor.pk}],
            source=UsageEvent.Source.CORRECTION,
        )
        audit_record(tenant=tenant, actor=actor, action="usage.corrected", target=f"{meter.slug}:{event_id}",
                     data={"meter": meter.slug, "quantity": quantity, "reason": reason,
                           "kind": "credit" if quantity < 0 else "debit"})
    return UsageEvent.objects.get(event_id=event_id)
