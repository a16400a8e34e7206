"""The gateway's part of an open's trace: the first request HAProxy proxies for a session becomes a span of the trace
that opened it.

HAProxy checks tokens and proxies with no Python on the path and makes no spans itself. With telemetry on, the open
keeps its W3C traceparent in Redis under the session (`first_request_expect`, where the route is set, through a
writer thread: `_handovers`); HAProxy sends
the egress log's lines (gateway.egress_log) to a datagram socket of the gateway process too (`FirstRequestListener`),
which records the first proxied request of each session (marked by HAProxy) — with HAProxy's own accept time and
duration — as `gateway.first_request`, a child of the open's `workspace.route` span. Off, neither the key nor the
socket exists.
"""
import json
import logging
import os
import socket
import threading
import time
from pathlib import Path

from django.conf import settings

from core import context, telemetry
from core.background import BackgroundQueue
from core.redis_client import redis_client
from workspaces.gateway import egress_log

log = logging.getLogger(__name__)

# HAProxy's lines are the egress log's (gateway.egress_log.LOG_FORMAT), sent to this process too with telemetry on:
# tag, session id, bytes, first ("1" on the session's first request), accept time (s, ms), active time (ms),
# status, method, path.
LOG_TAG = egress_log.PREFIX


def _redis():
    # Redis itself, not Django's cache: its key prefix may differ between the processes of one installation.
    return redis_client()


def _key(session_id) -> str:
    return f"{settings.HEARTH_INSTANCE}:gateway:first-request:{session_id}"


def first_request_expect(*, session_id) -> None:
    """Under the open's route span: keep its traceparent for the session's first proxied request (telemetry on).
    Written to Redis by a background thread (`_handovers`), not by the open: a round trip cost an open 0.1 ms of CPU."""
    traceparent = telemetry.traceparent()
    if traceparent is None:
        return
    # With the open's tenant, user and workspace: the gateway process has no request to read them from.
    _handovers.put((_key(session_id), {"traceparent": traceparent, **context.span_attributes()}))


# The opens' traceparents on their way to Redis: a background thread (one per process, started by the first open)
# sets what came in during the last HANDOVER_DELAY_SECONDS in one pipelined round trip, so an open spends no round
# trip on its trace and a busy web worker one per batch. The gateway looks again for a first request it finds no
# traceparent for, for FirstRequestListener.RETRY_SECONDS. Best effort: what a dying process holds is lost (its first
# requests start no span), and so is a batch Redis refuses.
HANDOVER_DELAY_SECONDS = 0.05


def _handovers_write(waiting) -> None:
    try:  # outside any trace: the sampler drops the pipeline's lone client span (core.telemetry._sampler)
        pipe = _redis().pipeline(transaction=False)
        for key, expected in waiting:
            pipe.set(key, json.dumps(expected), ex=settings.GATEWAY_TRACE_FIRST_REQUEST_TTL)
        pipe.execute()
    except Exception as exc:  # Redis down: those traces end at the route, the opens went on
        log.warning("the first requests of %s sessions will not join their traces: %s", len(waiting), exc)


_handovers = BackgroundQueue("hearth-trace-handover", _handovers_write, delay=HANDOVER_DELAY_SECONDS)


def first_request_record(line: str) -> bool | None:
    """One line of HAProxy's log (the egress log's format): a span under the session's open if it still expects one.
    None: a first request whose traceparent is not (yet) in Redis (the caller may look again)."""
    parts = line.strip().split(" ")
    if len(parts) < 10 or parts[0] != LOG_TAG or parts[3] != "1":
        return False  # not ours, or not a session's first request
    _, session_id, _bytes, _first, seconds, millis, active_ms, status, method, path = parts[:10]
    try:
        start_ns = int(seconds) * 10**9 + int(millis) * 10**6
        end_ns = start_ns + max(int(active_ms), 0) * 10**6
    except ValueError:
        return False
    expected = _redis().getdel(_key(session_id))
    if expected is None:  # not yet written, not traced, already recorded (a reload's new worker counts from 0), late
        return None
    expected = json.loads(expected)
    traceparent = expected.pop("traceparent")
    return telemetry.span_from(traceparent, "gateway.first_request", start_ns=start_ns, end_ns=end_ns, attributes={
        **expected, "hearth.session_id": session_id, "http.request.method": method, "url.path": path,
        "http.response.status_code": int(status) if status.isdigit() else 0})


class FirstRequestListener:
    """The datagram socket HAProxy logs first requests to, read by a thread of the gateway process."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.sock = None
        self.thread = None
        self.stopping = threading.Event()

    def start(self) -> None:
        if self.sock is not None:  # a restarted HAProxy logs to the same socket
            return
        self.path.unlink(missing_ok=True)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        os.chmod(self.path, 0o600)
        self.thread = threading.Thread(target=self._run, name="gateway-first-requests", daemon=True)
        self.thread.start()

    # A first request can come before its open's traceparent is in Redis (`_handovers` writes every 50 ms); one of an
    # open that was not traced (sampled out) is looked for RETRY_SECONDS / RETRY_EVERY times.
    RETRY_SECONDS = 0.5
    RETRY_EVERY = 0.1

    def _run(self) -> None:
        pending = []  # [next look, give up at, line]: first requests whose traceparent was not in Redis yet
        while not self.stopping.is_set():
            self.sock.settimeout(self.RETRY_EVERY if pending else 0.5)  # 0.5 s: to see stop() come
            try:
                line = self.sock.recv(65536).decode(errors="replace")
            except TimeoutError:
                line = None
            except OSError:
                return
            now = time.monotonic()
            if line:
                pending.append([now, now + self.RETRY_SECONDS, line])
            due, pending = [p for p in pending if p[0] <= now], [p for p in pending if p[0] > now]
            for entry in due:
                try:
                    recorded = first_request_record(entry[2])
                except Exception:  # a bad line or Redis away: the next one may do
                    log.warning("gateway: could not record a first request", exc_info=True)
                    continue
                if recorded is None and now + self.RETRY_EVERY < entry[1]:
                    entry[0] = now + self.RETRY_EVERY
                    pending.append(entry)

    def stop(self) -> None:
        if self.sock is not None:
            self.stopping.set()
            self.thread.join(timeout=2)
            self.sock.close()
            self.sock = None
            self.path.unlink(missing_ok=True)
