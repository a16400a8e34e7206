"""core.otlp writes the message opentelemetry's own OTLP encoder writes, for every kind of span the SDK makes, and
its exporter delivers it to a real OTLP/HTTP receiver on loopback (tests/otlp_receiver.py)."""
import pytest
from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from core import otlp
from tests.otlp_receiver import OtlpReceiver

ATTRIBUTES = {"hearth.tenant_id": "3", "empty": "", "yes": True, "no": False, "zero": 0, "negative": -42,
              "large": 2**62, "smallest": -(2**63), "ratio": 0.25, "raw": b"\x00\xff", "names": ("a", "b"),
              "ints": (1, -2), "flags": (True, False), "none": ()}


def _spans():
    """Spans of two providers (two resources), several tracers (scopes), every kind, a remote parent with a
    tracestate, links, events (an exception's too), statuses and dropped attributes."""
    memory = InMemorySpanExporter()
    for service in ("hearth-web", "hearth-worker"):
        provider = TracerProvider(resource=Resource.create({"service.name": service, "hearth.process": "web"}),
                                  span_limits=SpanLimits(max_span_attributes=20, max_event_attributes=2))
        provider.add_span_processor(SimpleSpanProcessor(memory))
        hearth = provider.get_tracer("hearth")
        library = provider.get_tracer("opentelemetry.instrumentation.psycopg", "0.66b1",
                                      schema_url="https://opentelemetry.io/schemas/1.11.0", attributes={"x": 1})
        remote = propagate.extract({"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                                    "tracestate": "vendor=a1,other=b2"})
        with hearth.start_as_current_span("POST api/v1/workspaces/<int:pk>/open", context=remote,
                                          kind=trace.SpanKind.SERVER, attributes=ATTRIBUTES) as server:
            server.add_event("checked", {"hearth.calls": "postgresql.SELECT 0.410 ms", "n": 3, "extra": 1.5})
            for kind in trace.SpanKind:
                with library.start_as_current_span(f"SELECT {kind.name}", kind=kind,
                                                   links=[trace.Link(server.get_span_context(), {"why": "x"})]):
                    pass
            with pytest.raises(ValueError):
                with hearth.start_as_current_span("workspace.claim", attributes={f"a{i}": i for i in range(25)}):
                    raise ValueError("engine away")
            with hearth.start_as_current_span("workspace.token") as token:
                token.set_status(trace.Status(trace.StatusCode.OK))
        with hearth.start_as_current_span("lonely root"):
            pass
    return memory.get_finished_spans()


def test_the_encoding_is_the_official_encoders_message():
    spans = _spans()
    assert any(s.dropped_attributes for s in spans) and any(s.events for s in spans) and any(s.links for s in spans)
    assert ExportTraceServiceRequest.FromString(otlp.encode(spans)) == encode_spans(spans)


def test_a_value_it_does_not_write_goes_through_the_official_encoder():
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    with provider.get_tracer("hearth").start_as_current_span("mapped", attributes={"map": {"k": "v"}}):
        pass
    with pytest.raises(otlp.Unexpected):
        otlp.encode(memory.get_finished_spans())


def test_the_exporter_delivers_to_a_real_receiver():
    receiver = OtlpReceiver()
    try:
        exporter = otlp.SpanExporter(endpoint=receiver.endpoint)
        spans = _spans()
        assert exporter.export(spans) is SpanExportResult.SUCCESS
        memory = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(memory))
        with provider.get_tracer("hearth").start_as_current_span("mapped", attributes={"map": {"k": "v"}}):
            pass
        assert exporter.export(memory.get_finished_spans()) is SpanExportResult.SUCCESS  # the official way
        exporter.shutdown()
    finally:
        receiver.close()
    got = {s.name: s for s in receiver.spans}
    assert len(receiver.spans) == len(spans) + 1 and receiver.requests == 2
    server = got["POST api/v1/workspaces/<int:pk>/open"]
    assert server.attributes["hearth.tenant_id"] == "3" and server.attributes["negative"] == -42
    assert server.parent_span_id == "b7ad6b7169203331" and server.kind == 2
    assert got["workspace.claim"].status_code == 2 and got["mapped"].attributes["map"] is not None
