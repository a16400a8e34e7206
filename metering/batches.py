"""A batch of raw usage events checked one by one: the ingestion statement's rows, and a reason per rejected event.

Validation is plain Python over the whole batch (one query for its tenants, the meter cache for its meters), so a
bad event rejects only itself and the statement sees only storable rows.
"""
import json
import re
from datetime import UTC, datetime

from django.conf import settings
from django.db import connection
from django.utils import timezone

from metering import periods
from metering.meters import meter_cache
from metering.models import Meter, UsageEvent
from tenants.exceptions import ServiceError
from tenants.models import Tenant

MAX_EVENT_ID = 128
# The platform's own event ids (usage_record's "<source>:<uuid>", sessions, samples, corrections). Ids are global,
# so an API event taking one would make the platform's event a duplicate: the API refuses these prefixes.
RESERVED_ID_PREFIXES = ("ws:", "egress:", "storage:", "seats:", "correction:", "internal:", "api:")
MAX_QUANTITY = 2**62  # per event; a batch whose events would overflow a roll-up has those rejected (usage_ingest)


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


def usage_events_prepare(events, *, source, now=None, check_window=True, scope=None):
    """Validate raw events (dicts) with plain Python; return (rows for the ingestion statement, rejected).

    A row is (event_id, tenant_id, tenant_slug, meter_id, quantity, subject JSON, timestamp, source, reason,
    actor_id): the order of the statement's arrays (`metering.ingestion`).

    Each event: {"id", "tenant": slug or Tenant, "meter": slug or Meter, "quantity", "timestamp", "subject"}.
    A bad event is rejected alone with a reason; the others go on (see docs/metering.md).

    `scope` (a service token's): (meter slugs allowed, tenant slugs allowed or None for every tenant); an event
    outside it is rejected alone (`meter_not_allowed`, `tenant_not_allowed`) before its tenant or meter is looked
    up, so a token learns nothing about tenants or meters outside its scope.
    """
    now = now or timezone.now()
    oldest = periods.open_since(now) if check_window else None
    newest = now + settings.METERING_FUTURE_SKEW
    correction = source == UsageEvent.Source.CORRECTION
    api = source == UsageEvent.Source.API
    allowed_meters, allowed_tenants = scope if scope is not None else (None, None)
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
        if allowed_tenants is not None and isinstance(tenant, str) and tenant not in allowed_tenants:
            rejected.append({"id": event_id, "code": "tenant_not_allowed",
                             "reason": f"This service token may not record usage for tenant '{_echo(tenant)}'."})
            continue
        meter = get("meter")
        if allowed_meters is not None and isinstance(meter, str) and meter not in allowed_meters:
            rejected.append({"id": event_id, "code": "meter_not_allowed",
                             "reason": f"This service token may not record meter '{_echo(meter)}'."})
            continue
        if isinstance(tenant, Tenant):
            tenant_id, tenant_slug = tenant.pk, tenant.slug
        else:
            tenant_id, tenant_slug = (tenant_ids.get(tenant), tenant) if isinstance(tenant, str) else (None, tenant)
            if tenant_id is None:
                shown = _echo(tenant) if isinstance(tenant, str) else tenant
                rejected.append({"id": event_id, "code": "unknown_tenant", "reason": f"There is no tenant '{shown}'."})
                continue
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
