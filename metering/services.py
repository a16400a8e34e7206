"""Writes of metering: recording usage exactly once (single, bulk, sessions, corrections), notices.

The exactly-once core is one SQL statement (`_INGEST_SQL`): events are inserted with ON CONFLICT (event_id)
DO NOTHING RETURNING, and only the rows actually returned are added to the roll-ups, in the same statement and
so the same transaction. Events are inserted in event-id order and roll-ups upserted in key order, so
concurrent batches wait for each other instead of deadlocking.
"""
import json
import logging
import math
import operator
import re
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import DataError, IntegrityError, connection, transaction
from django.utils import timezone

from config import db
from metering import periods
from metering.exceptions import QuotaExceeded
from metering.models import Meter, UsageEvent, UsageNotice, UsageRollup
from tenants import files
from tenants.audit import audit_record
from tenants.events import event_emit
from tenants.exceptions import Forbidden, NotFound, ServiceError
from tenants.models import Tenant

log = logging.getLogger(__name__)

WORKSPACE_SECONDS = "workspace_seconds"
STORAGE_BYTES = "storage_bytes"
EGRESS_BYTES = "egress_bytes"
SEATS = "seats"

MAX_EVENT_ID = 128
# The platform's own event ids (usage_record's "<source>:<uuid>", sessions, samples, corrections). Ids are global,
# so an API event taking one would make the platform's event a duplicate: the API refuses these prefixes.
RESERVED_ID_PREFIXES = ("ws:", "egress:", "storage:", "seats:", "correction:", "internal:", "api:")
MAX_QUANTITY = 2**62  # per event; a batch whose events would overflow a roll-up has those rejected (usage_ingest)
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
SELECT (SELECT count(*) FROM ins), (SELECT coalesce(sum(quantity), 0) FROM ins), (SELECT count(*) FROM up)
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


# --- meters and tenants, resolved without a query per event ------------------------------------------------------


class _MeterCache:
    """slug -> (id, aggregation, active); reloaded when a slug is unknown (a meter declared since)."""

    ttl = 30.0  # seconds: a meter deactivated in admin refuses events within this long

    def __init__(self):
        self._by_slug = {}
        self._loaded_at = 0.0

    def get(self, slug):
        hit = self._by_slug.get(slug)
        if hit is None or time.monotonic() - self._loaded_at > self.ttl:
            self.reload()
            hit = self._by_slug.get(slug)
        return hit

    def reload(self):
        from metering.selectors import meters_forget

        meters_forget()
        self._loaded_at = time.monotonic()
        self._by_slug = {
            slug: (pk, aggregation, active)
            for pk, slug, aggregation, active in Meter.objects.values_list("pk", "slug", "aggregation", "active")
        }


meter_cache = _MeterCache()


def meter_get(slug_or_meter):
    if isinstance(slug_or_meter, Meter):
        return slug_or_meter
    try:
        return Meter.objects.get(slug=slug_or_meter)
    except Meter.DoesNotExist:
        raise NotFound(f"There is no meter '{slug_or_meter}'.", code="unknown_meter") from None


def _tenants_by_slug(slugs):
    """slug -> id for the known, not offboarded tenants among `slugs`.

    One array parameter instead of an IN list: with a thousand slugs the ORM's IN list costs more than the query.
    """
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT slug, id FROM {Tenant._meta.db_table} WHERE slug = ANY(%s::varchar[]) AND status <> %s",
            [list(slugs), Tenant.Status.OFFBOARDED],
        )
        return dict(cursor.fetchall())


# --- the exactly-once core ---------------------------------------------------------------------------------------


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
        inserted, quantity, _ = cursor.fetchone()
    return inserted, int(quantity)


def _timestamp(value):
    if isinstance(value, datetime):
        if timezone.is_naive(value):
            raise ServiceError("Usage timestamps must be timezone-aware.", field="timestamp")
        return value
    if isinstance(value, str):
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
        if parsed.tzinfo is None:
            raise ValueError("no time zone")
        return parsed
    if isinstance(value, int | float) and not isinstance(value, bool):
        return datetime.fromtimestamp(value, UTC)
    raise ValueError("not a timestamp")


_JSON_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")  # an escaped NUL, not an escaped backslash before "u0000"


def _storable(text):
    """Whether PostgreSQL can store `text`: no NUL, and encodable as UTF-8 (no lone surrogate from JSON)."""
    if "\x00" in text:
        return False
    if text.isascii():
        return True
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _echo(text):
    """`text` as the answer can carry it (a lone surrogate cannot be encoded): escaped where it must be."""
    return text if _storable(text) else text.encode("utf-8", "backslashreplace").decode().replace("\x00", "\\x00")


def _subject_storable(subject_json, subject):
    """Whether jsonb takes the subject: no NaN or Infinity, no NUL, no lone surrogate. The cheap test first."""
    if "\\u" not in subject_json and "NaN" not in subject_json and "Infinity" not in subject_json:
        return True
    try:
        text = json.dumps(subject, ensure_ascii=False, allow_nan=False, default=str)
        text.encode()
    except (ValueError, UnicodeEncodeError):
        return False
    return _JSON_NUL.search(text) is None


_UNSEEN = object()
_subject_json_any = json.JSONEncoder(separators=(",", ":"), default=str).encode  # json.dumps(**kw) builds one a call
_quote = json.encoder.encode_basestring_ascii  # what the encoder above writes strings with (C)


def _subject_json(subject):
    """The encoder's exact output, a third of its time for the usual subject: string keys, int or string values."""
    parts = []
    for key, value in subject.items():
        kind = type(value)
        if type(key) is not str or (kind is not int and kind is not str):
            return _subject_json_any(subject)
        parts.append(f"{_quote(key)}:{value if kind is int else _quote(value)}")
    return "{" + ",".join(parts) + "}"


def usage_events_prepare(events, *, source, now=None, check_window=True):
    """Validate raw events (dicts) with plain Python; return (rows for _ingest_rows, rejected).

    Each event: {"id", "tenant": slug or Tenant, "meter": slug or Meter, "quantity", "timestamp", "subject"}.
    A bad event is rejected alone with a reason; the others go on (see docs/metering.md).
    """
    now = now or timezone.now()
    oldest = periods.open_since(now) if check_window else None
    newest = now + settings.METERING_FUTURE_SKEW
    correction = source == UsageEvent.Source.CORRECTION
    api = source == UsageEvent.Source.API
    rejected = []
    slugs = set()
    for event in events:
        tenant = event.get("tenant") if isinstance(event, dict) else None
        if isinstance(tenant, str) and _storable(tenant):
            slugs.add(tenant)
    tenant_ids = _tenants_by_slug(slugs) if slugs else {}
    meters = {}  # slug -> the cache's answer, once per batch
    rows = []
    append = rows.append
    for position, event in enumerate(events):
        if not isinstance(event, dict):
            rejected.append({"id": None, "index": position, "code": "invalid",
                             "reason": "An event must be a JSON object."})
            continue
        get = event.get
        event_id = get("id")
        if event_id is None:
            event_id = get("event_id")
        if (not isinstance(event_id, str) or not event_id or len(event_id) > MAX_EVENT_ID
                or not _storable(event_id)):
            shown = _echo(event_id) if isinstance(event_id, str) else event_id if isinstance(event_id, int) else None
            rejected.append({"id": shown, "index": position, "code": "invalid_id",
                             "reason": f"'id' must be a non-empty string of at most {MAX_EVENT_ID} characters "
                                       "(no NUL, valid Unicode)."})
            continue
        if api and event_id.startswith(RESERVED_ID_PREFIXES):
            rejected.append({"id": event_id, "code": "reserved_id",
                             "reason": f"Ids starting with {', '.join(RESERVED_ID_PREFIXES)} are the platform's own; "
                                       "prefix yours with your service's name, or use a UUID."})
            continue
        tenant = get("tenant")
        if isinstance(tenant, Tenant):
            tenant_id, tenant_slug = tenant.pk, tenant.slug
        else:
            tenant_id, tenant_slug = (tenant_ids.get(tenant), tenant) if isinstance(tenant, str) else (None, tenant)
            if tenant_id is None:
                shown = _echo(tenant) if isinstance(tenant, str) else tenant
                rejected.append({"id": event_id, "code": "unknown_tenant", "reason": f"There is no tenant '{shown}'."})
                continue
        meter = get("meter")
        if isinstance(meter, str):
            meter_info = meters.get(meter, _UNSEEN)
            if meter_info is _UNSEEN:  # an unknown slug reloads the cache once per batch, not once per event
                meter_info = meters[meter] = meter_cache.get(meter)
        elif isinstance(meter, Meter):
            meter_info = (meter.pk, meter.aggregation, meter.active)
        else:
            meter_info = None
        if meter_info is None or not meter_info[2]:
            slug = meter.slug if isinstance(meter, Meter) else _echo(meter) if isinstance(meter, str) else meter
            rejected.append({"id": event_id, "code": "unknown_meter", "reason": f"There is no active meter '{slug}'."})
            continue
        quantity = get("quantity")
        if type(quantity) is not int:
            if isinstance(quantity, float) and quantity.is_integer():
                quantity = int(quantity)
            if not isinstance(quantity, int) or isinstance(quantity, bool):
                rejected.append({"id": event_id, "code": "invalid_quantity",
                                 "reason": "'quantity' must be a whole number (seconds, bytes, tokens…)."})
                continue
        if not -MAX_QUANTITY <= quantity <= MAX_QUANTITY:
            rejected.append({"id": event_id, "code": "invalid_quantity",
                             "reason": "'quantity' must be a whole number (seconds, bytes, tokens…)."})
            continue
        if quantity < 0 and not correction:
            rejected.append({"id": event_id, "code": "negative_quantity",
                             "reason": "'quantity' must not be negative; staff record credits as corrections."})
            continue
        ts = get("timestamp")
        if ts is None:
            ts = now
        elif type(ts) is not datetime or ts.utcoffset() is None:  # aware datetimes (internal callers) go on
            try:
                ts = _timestamp(ts)
            except (ValueError, TypeError, OverflowError, OSError):
                rejected.append({"id": event_id, "code": "invalid_timestamp",
                                 "reason": "'timestamp' must be ISO 8601 with a time zone, or Unix seconds."})
                continue
        if ts > newest:
            rejected.append({"id": event_id, "code": "timestamp_in_future",
                             "reason": f"'timestamp' is more than {settings.METERING_FUTURE_SKEW} in the future."})
            continue
        if oldest is not None and ts < oldest:
            rejected.append({"id": event_id, "code": "timestamp_too_old",
                             "reason": f"'timestamp' is before {oldest.isoformat()}, the start of the open billing "
                                       "period; that period is closed."})
            continue
        subject = get("subject")
        if not subject:
            subject_json = "{}"
        elif isinstance(subject, dict):
            subject_json = _subject_json(subject)
            if len(subject_json) > 2000:
                rejected.append({"id": event_id, "code": "invalid_subject", "reason": "'subject' is too large."})
                continue
            if not _subject_storable(subject_json, subject):
                rejected.append({"id": event_id, "code": "invalid_subject",
                                 "reason": "'subject' holds a NUL, an unpaired surrogate, NaN or Infinity."})
                continue
        else:
            rejected.append({"id": event_id, "code": "invalid_subject",
                             "reason": "'subject' must be an object such as {\"user\": 1, \"workspace\": 2}."})
            continue
        if correction:
            append((event_id, tenant_id, tenant_slug, meter_info[0], quantity, subject_json, ts, source,
                    get("reason", ""), get("actor_id")))
        else:
            append((event_id, tenant_id, tenant_slug, meter_info[0], quantity, subject_json, ts, source, "", None))
    return rows, rejected


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


def usage_ingest(events, *, now=None):
    """The ingestion API's path: bad events are rejected one by one, the rest recorded exactly once."""
    rows, rejected = usage_events_prepare(events, source=UsageEvent.Source.API, now=now, check_window=True)
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


def egress_bytes_record(*, tenant, session_id, user_id, workspace_id, counted, counter, at):
    """Record the bytes a session's gateway counter went from `counted` to `counter`; returns the bytes newly counted.

    The counter is cumulative per session (carried over gateway reloads). One that went down was reset (the
    gateway restarted): all of it is new. The event id is (session, from, to), so a retry never counts twice.
    """
    quantity = counter - counted if counter >= counted else counter
    if quantity <= 0:
        return 0
    event = {"id": f"egress:{session_id}:{counted}:{counter}", "tenant": tenant, "meter": EGRESS_BYTES,
             "quantity": quantity, "timestamp": at,
             "subject": {"user": user_id, "workspace": workspace_id, "session": session_id}}
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


# --- allowances, entitlements and notices ------------------------------------------------------------------------

_running_sessions_counter = None


def running_sessions_counter_register(fn):
    """Workspaces registers fn(tenant) -> number of running sessions, used when entitlement_check gets none."""
    global _running_sessions_counter
    _running_sessions_counter = fn
    return fn


def _human_duration(seconds):
    seconds = int(seconds)
    if seconds % 3600 == 0 and seconds >= 3600:
        hours = seconds // 3600
        return f"{hours} hour{'s' if hours != 1 else ''}"
    minutes = seconds // 60
    return f"{minutes} minute{'s' if minutes != 1 else ''}"


def entitlement_check(*, tenant, now=None, running_sessions=None):
    """Raise QuotaExceeded if `tenant` may not open a workspace now; return None if it may.

    Checks, in order: the daily allowance, the monthly allowance (unless the plan allows paid overage), the
    storage cap (over it, new opens are refused; nothing is deleted and running sessions go on), and the
    number of concurrent workspaces (`running_sessions`, or the registered counter, since metering cannot
    query sessions itself).
    """
    from metering import selectors

    now = now or timezone.now()
    if tenant.status != Tenant.Status.ACTIVE:
        raise Forbidden(f"The tenant is {tenant.status}: no workspace can be opened.", code=f"tenant_{tenant.status}")
    plan = tenant.plan
    upgrade_url = settings.METERING_UPGRADE_URL
    allowance = selectors.workspace_allowance(tenant=tenant, now=now)
    if allowance["day"] and allowance["day"]["remaining"] <= 0:
        day = allowance["day"]
        raise QuotaExceeded(
            f"{tenant.name} has used today's {_human_duration(day['included'])} of workspace time on the "
            f"{plan.name} plan. It resets at {day['resets_at']:%Y-%m-%d %H:%M %Z}; upgrade for more at "
            f"{upgrade_url}",
            meter=WORKSPACE_SECONDS, resets_at=day["resets_at"], upgrade_url=upgrade_url,
            extra={"period": "day", "used": day["used"], "included": day["included"]},
        )
    month = allowance["month"]
    if month and month["remaining"] <= 0 and not plan.allows_overage:
        raise QuotaExceeded(
            f"{tenant.name} has used this month's {_human_duration(month['included'])} of workspace time on the "
            f"{plan.name} plan. It resets at {month['resets_at']:%Y-%m-%d %H:%M %Z}; upgrade for more at "
            f"{upgrade_url}",
            meter=WORKSPACE_SECONDS, resets_at=month["resets_at"], upgrade_url=upgrade_url,
            extra={"period": "month", "used": month["used"], "included": month["included"]},
        )
    if plan.storage_mb is not None:
        stored = selectors.storage_current(tenant=tenant, now=now)
        cap = plan.storage_mb * 1024 * 1024
        if stored > cap:
            raise QuotaExceeded(
                f"{tenant.name} stores {stored / 1048576:.0f} MB, over the {plan.storage_mb} MB of the {plan.name} "
                f"plan: new workspaces cannot open until files are deleted (nothing is deleted for you). "
                f"Upgrade for more storage at {upgrade_url}",
                meter=STORAGE_BYTES, resets_at=None, upgrade_url=upgrade_url,
                extra={"used": stored, "included": cap},
            )
    if plan.max_concurrent_workspaces is not None:
        if running_sessions is None and _running_sessions_counter is not None:
            running_sessions = _running_sessions_counter(tenant)
        if running_sessions is not None and running_sessions >= plan.max_concurrent_workspaces:
            limit = plan.max_concurrent_workspaces
            raise QuotaExceeded(
                f"{tenant.name} already runs {running_sessions} workspace{'s' if running_sessions != 1 else ''}, "
                f"the most the {plan.name} plan allows at once ({limit}). Close one first, or upgrade at "
                f"{upgrade_url}",
                meter="concurrent_workspaces", resets_at=None, upgrade_url=upgrade_url,
                extra={"used": running_sessions, "included": limit},
            )


def usage_thresholds_check(*, tenant, now=None, meters=None):
    """Emit usage.threshold_80 / threshold_100 / overage_started once per tenant, meter and period.

    Runs in the caller's transaction (the notice row and the outbox event commit together). Returns the kinds
    emitted.
    """
    from metering import selectors

    now = now or timezone.now()
    emitted = []
    with transaction.atomic():
        for item in selectors.usage_limits(tenant=tenant, now=now):
            if meters is not None and item["meter"] not in meters:
                continue
            used, included = item["used"], item["included"]
            kinds = []
            if used >= 0.8 * included:
                kinds.append(UsageNotice.Kind.THRESHOLD_80)
            if used >= included:
                kinds.append(UsageNotice.Kind.THRESHOLD_100)
            if used > included and item["overage_allowed"]:
                kinds.append(UsageNotice.Kind.OVERAGE_STARTED)
            for kind in kinds:
                notice_key = dict(tenant=tenant, meter_id=item["meter_id"], period=item["period"],
                                  period_start=item["period_start"], kind=kind)
                if UsageNotice.objects.filter(**notice_key).exists():
                    continue
                try:
                    with transaction.atomic():
                        UsageNotice.objects.create(**notice_key, used=used, included=included)
                except IntegrityError:  # a concurrent check sent it
                    continue
                event_emit(type=str(kind), tenant=tenant, payload={
                    "tenant": tenant.slug, "meter": item["meter"], "period": item["period"],
                    "period_start": item["period_start"].isoformat(), "used": used, "included": included,
                    "resets_at": item["resets_at"].isoformat() if item["resets_at"] else None,
                })
                emitted.append((item["meter"], item["period"], str(kind)))
    return emitted


# --- samplers: storage and seats ---------------------------------------------------------------------------------


def _directory_bytes(path):
    """Regular files' bytes below `path`, at any depth and path length, never following a symlink."""
    for _ in range(2):
        try:
            return files.tree_bytes(path)
        except files.TreeChanged:  # a directory moved under the walk: measure again
            continue
    return files.tree_bytes(path)


def storage_sample(*, tenant, now=None):
    """Measure the tenant's storage directory and record it as a storage_bytes sample (one per tenant and hour)."""
    from tenants.services import tenant_storage_path

    now = now or timezone.now()
    size = _directory_bytes(tenant_storage_path(tenant.slug))
    hour = now.astimezone(UTC).strftime("%Y%m%dT%H")
    usage_record(tenant=tenant, meter=STORAGE_BYTES, quantity=size, timestamp=now,
                 event_id=f"storage:{tenant.slug}:{hour}", subject={"path": "tenant"})
    return size


def seats_sample(*, tenant, now=None):
    """Record the tenant's member count as a seats sample; the day's and the month's figure is the peak.

    One sample per tenant, hour and count: the hourly task repeats harmlessly, and a member joining mid-hour
    (sampled at once by the outbox consumer in `metering.consumers`) still raises the peak.
    """
    now = now or timezone.now()
    members = tenant.memberships.count()
    hour = now.astimezone(UTC).strftime("%Y%m%dT%H")
    usage_record(tenant=tenant, meter=SEATS, quantity=members, timestamp=now,
                 event_id=f"seats:{tenant.slug}:{hour}:{members}")
    return members


# --- meters ------------------------------------------------------------------------------------------------------


def meter_declare(*, slug, name, unit, aggregation=Meter.Aggregation.SUM, billable=True,
                  declared_by=Meter.DeclaredBy.API, description="", actor=None):
    """Declare a custom meter (by a template or through the API); idempotent on slug if nothing differs."""
    from django.utils.text import slugify

    if not slug or slugify(slug).replace("-", "_") != slug.replace("-", "_") or len(slug) > 64:
        raise ServiceError(f"'{slug}' is not a usable meter slug: use lower-case letters, digits, _ and -.",
                           field="slug")
    if aggregation not in Meter.Aggregation.values:
        raise ServiceError(f"Unknown aggregation '{aggregation}'. Use sum or max.", field="aggregation")
    with transaction.atomic():
        meter, created = Meter.objects.get_or_create(slug=slug, defaults=dict(
            name=name or slug, unit=unit or "units", aggregation=aggregation, billable=billable,
            declared_by=declared_by, description=description))
        if not created and meter.aggregation != aggregation:
            raise ServiceError(f"Meter '{slug}' exists with aggregation {meter.aggregation}.", code="meter_conflict")
        if created:
            audit_record(tenant=None, actor=actor, action="meter.declared", target=slug,
                         data={"unit": meter.unit, "aggregation": aggregation, "declared_by": declared_by})
    meter_cache.reload()
    return meter


__all__ = [
    "IngestResult", "QuotaExceeded", "entitlement_check", "usage_record", "usage_record_many", "usage_ingest",
    "workspace_seconds_record", "usage_correction_record", "usage_thresholds_check", "storage_sample",
    "seats_sample", "meter_declare",
    "running_sessions_counter_register", "UsageRollup",
]
