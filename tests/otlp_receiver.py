"""A real OTLP/HTTP trace receiver on loopback for the tests: what a collector would get, decoded from the protobuf
`ExportTraceServiceRequest` (opentelemetry-proto) that the SDK's exporter posts to /v1/traces."""
import contextlib
import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from django.db import connection
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from core import context, telemetry


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass
class ReceivedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict
    resource: dict = field(default_factory=dict)
    status_code: int = 0

    @property
    def service(self):
        return self.resource.get("service.name")


class OtlpReceiver:
    """`receiver.endpoint` for OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; `receiver.spans` as they arrive."""

    def __init__(self):
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                receiver._add(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"

    def _add(self, request):
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(ReceivedSpan(
                        name=s.name, trace_id=s.trace_id.hex(), span_id=s.span_id.hex(),
                        parent_span_id=s.parent_span_id.hex(), kind=s.kind, start_ns=s.start_time_unix_nano,
                        end_ns=s.end_time_unix_nano, attributes={a.key: _value(a.value) for a in s.attributes},
                        resource=resource, status_code=s.status.code))
        with self._lock:
            self.requests += 1
            self.spans.extend(got)

    def wait_for(self, predicate, timeout=10.0):
        """The spans once `predicate(spans)` holds (polling), else fails with what did arrive."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                spans = list(self.spans)
            if predicate(spans):
                return spans
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; received: {sorted({(s.service, s.name) for s in spans})}")
            time.sleep(0.05)

    def trace(self, trace_id):
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@contextlib.contextmanager
def telemetry_to(receiver, monkeypatch):
    """Telemetry on in this process, exporting to `receiver`; off again afterwards."""
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    telemetry.telemetry_shutdown()  # forget an earlier "off" of this process
    assert telemetry.telemetry_setup(process="web")
    # The instrumentation wraps connections opened from now on; the test's own was opened before (a web process sets
    # up before its first connection), so it gets the same cursor factory explicitly.
    connection.ensure_connection()
    PsycopgInstrumentor().instrument_connection(connection.connection,
                                                tracer_provider=telemetry._state["provider"])
    try:
        yield
    finally:
        if connection.connection is not None:
            PsycopgInstrumentor.uninstrument_connection(connection.connection)
            # It leaves the connection marked as instrumented: the next test's instrument_connection would do nothing.
            connection.connection._is_instrumented_by_opentelemetry = False
        telemetry.telemetry_shutdown()
        context.context_clear()


def calls_of(span):
    """The names in a span's `hearth.calls` ("haproxy.set map 0.210 ms, postgresql.SELECT 0.080 ms"), in order."""
    return [call.rsplit(" ", 2)[0] for call in span.attributes.get("hearth.calls", "").split(", ") if call]
