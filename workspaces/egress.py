"""Egress metering (`egress_bytes`): every byte leaving a workspace counted once, for the session that sent it.

Two sources that never see the same byte:
- `log`: what the gateway sent to the client for the session, from the gateway's egress log (a line per finished
  stream, written by whichever HAProxy worker ends it: `gateway.egress_log`), read from a cursor that moves in the
  transaction that records the bytes; the session's mark is the sum of its lines read so far. (Sessions metered
  before the log have `gw:<generation>` marks from the workers' tables; nothing adds to those any more.)
- `if:<container>`: what the container sent out of its own interface, except its answers on its service port (the
  gateway's connections), from a counter in its network namespace (`runtime.egress_counter`).
Each session keeps a mark per source (`Session.egress_marks`); a reading at or below its mark is stale (an earlier
read committed late) and changes nothing, so overlapping ticks, reloads and restarts can neither bill twice nor move
a mark back. Mark and usage event commit together under the session's row lock; the event id names the source and
the range, so a retry is a duplicate.
"""
import logging
import uuid

from django.db import transaction
from django.db.models import F

from metering import services as metering_services
from workspaces import runtime as rt
from workspaces.gateway import egress_log
from workspaces.gateway.config import gateway_config
from workspaces.models import GatewayEgressCursor, Session

log = logging.getLogger(__name__)


LOG_SOURCE = "log"


def interface_source(container_id) -> str:
    return f"if:{container_id}"


def egress_record(*, session_id, readings: dict, at) -> int:
    """Meter `readings` ({source: cumulative counter}) of one session; returns the bytes newly counted."""
    with transaction.atomic():
        session = Session.objects.select_for_update().select_related("tenant").get(pk=session_id)
        marks = dict(session.egress_marks or {})
        recorded = advanced = 0
        for source in sorted(readings):
            counter, counted = int(readings[source]), int(marks.get(source, 0))
            if counter <= counted:
                continue  # stale: a later reading was metered first
            recorded += metering_services.egress_bytes_record(
                tenant=session.tenant, session_id=str(session.pk), user_id=session.user_id,
                workspace_id=session.workspace_id, source=source, counted=counted, counter=counter, at=at)
            advanced += counter - counted
            marks[source] = counter
        if advanced:
            Session.objects.filter(pk=session.pk).update(
                egress_marks=marks, egress_bytes_metered=F("egress_bytes_metered") + advanced)
    return recorded


def egress_baseline_read(container) -> int | None:
    """Where the provisioning finishes (off the request path): the counter a claim starts its session from."""
    return _interface_reading(container)


def initial_marks(container) -> dict:
    """A new session's marks on `container`: what the container sent before it was ready is nobody's. (What a WARM
    container sends while it waits is nothing that leaves: its address has no Internet access until a claim.)
    No container yet (a session still `starting`): no marks."""
    if container is None or container.egress_baseline_bytes is None:
        return {}
    return {interface_source(container.pk): container.egress_baseline_bytes}


def _interface_reading(container) -> int | None:
    if not container.engine_id:
        return None
    try:
        return rt.runtime_for(container.node).egress_read(container.engine_id)
    except (rt.RuntimeUnavailable, rt.RuntimeError_) as exc:
        log.warning("egress of %s not read: %s", container, exc)
        return None


def egress_meter_all(*, now, cfg=None) -> int:
    """The metering tick: the gateway's egress log since the cursor, and the interface counter of every live
    session's container. Returns the bytes newly counted."""
    recorded = gateway_log_meter(now=now, cfg=cfg)
    # A session still starting (asynchronous cold open) has no container yet: nothing of it to read.
    for session in Session.objects.filter(ended_at__isnull=True, container__isnull=False).select_related(
            "container__node"):
        sent = _interface_reading(session.container)
        if sent is None:
            continue
        source = interface_source(session.container_id)
        if sent <= int((session.egress_marks or {}).get(source, 0)):
            continue
        try:
            recorded += egress_record(session_id=session.pk, readings={source: sent}, at=now)
        except Exception:  # one session's failure must not stop the others' metering; the next tick retries
            log.exception("metering egress of session %s failed", session.pk)
    return recorded


def gateway_log_meter(*, now, cfg=None) -> int:
    """Meter the gateway's egress log from the cursor on, a chunk per transaction: the sessions' bytes and the
    cursor commit together (the cursor row is locked: overlapping ticks take turns, and a crash repeats nothing)."""
    run_dir = str((cfg or gateway_config()).run_dir)
    GatewayEgressCursor.objects.get_or_create(run_dir=run_dir)
    recorded = 0
    while True:
        with transaction.atomic():
            cursor = GatewayEgressCursor.objects.select_for_update().get(run_dir=run_dir)
            chunk = egress_log.read(run_dir, egress_log.Cursor(cursor.file, cursor.offset))
            recorded += _log_chunk_record(chunk.bytes_by_session, at=now)
            moved = (chunk.cursor.file, chunk.cursor.offset) != (cursor.file, cursor.offset)
            if moved:
                GatewayEgressCursor.objects.filter(pk=cursor.pk).update(
                    file=chunk.cursor.file, offset=chunk.cursor.offset)
        if not moved or not chunk.lines:
            break
    egress_log.prune(run_dir, chunk.cursor)
    return recorded


def _log_chunk_record(bytes_by_session: dict, *, at) -> int:
    ids = {}
    for session_id in bytes_by_session:
        try:
            ids[session_id] = uuid.UUID(session_id)
        except ValueError:
            continue  # not one of ours (another install behind the same gateway)
    marks = dict(Session.objects.filter(pk__in=list(ids.values())).values_list("pk", "egress_marks"))
    recorded = 0
    for session_id in sorted(ids):
        pk = ids[session_id]
        if pk not in marks:
            continue  # not one of ours
        counted = int((marks[pk] or {}).get(LOG_SOURCE, 0))
        recorded += egress_record(session_id=pk, readings={LOG_SOURCE: counted + bytes_by_session[session_id]}, at=at)
    return recorded


def container_egress_final(container, *, at) -> int:
    """At release, before the container (and its counter) is removed: its last session's remaining bytes."""
    session = Session.objects.filter(container=container).order_by("-started_at").only("pk").first()
    if session is None:
        return 0
    sent = _interface_reading(container)
    if sent is None:
        return 0
    return egress_record(session_id=session.pk, readings={interface_source(container.pk): sent}, at=at)
