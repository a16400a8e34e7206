"""The hand-over of an open's trace to the gateway (workspaces.gateway.tracing): the open leaves its traceparent to a
background writer, and the gateway's listener looks again for a first request that came before it was written.

Real Redis, a real datagram socket (the one HAProxy logs to) and a real OTLP/HTTP receiver on loopback; HAProxy's
log line is written by the test in HAProxy's format (tests/workspaces/test_open_trace.py runs the real HAProxy).
"""
import socket
import time

import pytest

from core import context, telemetry
from tests.otlp_receiver import telemetry_to
from workspaces.gateway import tracing

pytestmark = pytest.mark.django_db


def test_a_first_request_logged_before_its_traceparent_is_written_still_joins_the_open(receiver, monkeypatch,
                                                                                      tmp_path):
    monkeypatch.setattr(tracing._handovers, "delay", 0.3)  # the line surely comes first
    session_id = f"handover-{time.monotonic_ns()}"
    listener = tracing.FirstRequestListener(tmp_path / "first-requests.sock")
    with telemetry_to(receiver, monkeypatch):
        listener.start()
        try:
            with telemetry.span("workspace.route") as route:
                context.context_set(tenant_id=5, session_id=session_id)
                tracing.first_request_expect(session_id=session_id)
            assert tracing._redis().get(tracing._key(session_id)) is None  # not written by the open itself
            line = f"{tracing.LOG_TAG} {session_id} 512 1 {int(time.time())} 250 3 200 GET /"
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(line.encode(), str(listener.path))
            spans = receiver.wait_for(lambda got: any(s.name == "gateway.first_request" for s in got), timeout=5)
        finally:
            listener.stop()
    (first,) = [s for s in spans if s.name == "gateway.first_request"]
    assert first.parent_span_id == format(route.get_span_context().span_id, "016x")
    assert first.attributes["hearth.tenant_id"] == "5" and first.attributes["hearth.session_id"] == session_id
    assert tracing._redis().get(tracing._key(session_id)) is None  # taken once
