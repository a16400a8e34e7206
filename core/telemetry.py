"""OpenTelemetry traces for every Hearth process: set up once per process from the standard OTEL_* variables, off
unless an exporter is asked for, and the few helpers Hearth's own code makes spans with (docs/OBSERVABILITY.md).

On when `OTEL_TRACES_EXPORTER` names `otlp` (or `console`), or, with it unset, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it off
whatever else is set. Off, nothing is instrumented and `span()` hands back one shared no-op context manager.
Where it is called: config/wsgi.py and config/asgi.py (web, runserver included), config/celery.py
(`worker_process_init`, after the fork), `manage.py gateway` and `manage.py engine_events`, bench/claim.py.
"""
import contextlib
import logging
import os
import time

from opentelemetry import trace

from core import context

log = logging.getLogger(__name__)

TRACER_NAME = "hearth"
_NOOP = contextlib.nullcontext()

_tracer = None  # a Tracer once set up in this process
_state = {"pid": None, "provider": None, "instrumentors": []}


def exporters(environ=None) -> list[str]:
    """The span exporters the environment asks for ([] = telemetry off): the rule in the module's docstring."""
    environ = os.environ if environ is None else environ
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return []
    named = [name.strip().lower() for name in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if name.strip()]
    if named:
        return [name for name in named if name in ("otlp", "console")]
    if environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return ["otlp"]
    return []


def enabled() -> bool:
    """Set up in this process (its tracer makes real spans)."""
    return _tracer is not None


def telemetry_setup(*, process: str, environ=None) -> bool:
    """Set up tracing in this process, once (a forked child sets up its own): the provider with the exporters the
    environment asks for behind a BatchSpanProcessor, and the instrumentation of Django, Celery, psycopg and Redis.
    `process` names it (`service.name` is `hearth-<process>` unless OTEL_SERVICE_NAME is set). False: left off."""
    global _tracer
    if _state["pid"] == os.getpid():
        return _tracer is not None
    if _state["provider"] is not None:  # set up before a fork: the SDK restarts its export thread in the child
        _state["pid"] = os.getpid()
        return True
    if environ is None:
        _settings_load()
        environ = os.environ
    names = exporters(environ)
    if not names:
        _state["pid"] = os.getpid()
        return False
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {"hearth.process": process, "hearth.instance": environ.get("HEARTH_INSTANCE", "hearth")}
    if not environ.get("OTEL_SERVICE_NAME"):
        attributes["service.name"] = f"hearth-{process}"
    # The sampler comes from OTEL_TRACES_SAMPLER(_ARG), the batch's sizes and delay from OTEL_BSP_*.
    provider = TracerProvider(resource=Resource.create(attributes), sampler=_sampler())
    provider.add_span_processor(_context_span_processor())
    for name in names:
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    if isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        trace.set_tracer_provider(provider)  # for any library that asks the global one; ours is passed explicitly
    _state.update(pid=os.getpid(), provider=provider, instrumentors=_instrument(provider))
    _tracer = provider.get_tracer(TRACER_NAME)
    log.info("telemetry: traces to %s (service %s)", ", ".join(names),
             environ.get("OTEL_SERVICE_NAME") or attributes["service.name"])
    return True


def _settings_load() -> None:
    """Hearth's settings read `.env` into the environment (config/settings/base.py): OTEL_* written there count too."""
    try:
        from django.conf import settings

        settings.INSTALLED_APPS  # noqa: B018
    except Exception:  # no Django settings here (a script): the environment as it is
        pass


def _instrument(provider) -> list:
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    done = []
    for instrumentor, options in ((DjangoInstrumentor(), {}), (CeleryInstrumentor(), {}),
                                  # SQL comments would make every prepared statement a new one (config/db.py).
                                  (PsycopgInstrumentor(), {"enable_commenter": False}), (RedisInstrumentor(), {})):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider, **options)
            done.append(instrumentor)
    return done


def telemetry_shutdown() -> None:
    """Export what is pending and take the instrumentation off again (tests; a process exits through the provider's
    own atexit hook)."""
    global _tracer
    provider = _state["provider"]
    for instrumentor in _state["instrumentors"]:
        instrumentor.uninstrument()
    if provider is not None:
        provider.shutdown()
    _tracer = None
    _state.update(pid=None, provider=None, instrumentors=[])


def flush(timeout_ms: int = 5000) -> bool:
    provider = _state["provider"]
    return provider.force_flush(timeout_ms) if provider is not None else True


def span(name: str, attributes: dict | None = None, *, child_only: bool = False):
    """`with span("workspace.claim"):` a span of Hearth's own work under the current one; a shared no-op when off.
    `child_only`: only inside traced work (a call made on its own, e.g. a heartbeat ping, makes no trace)."""
    if _tracer is None or (child_only and not trace.get_current_span().is_recording()):
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def db_span(sql: str):
    """A client span for a statement that config/db.py runs on its own cursor, which the psycopg instrumentation
    (Django's cursors) does not see: the open's lookup and claim. Inside traced work only."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return _NOOP
    operation = sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "SQL"
    return _tracer.start_as_current_span(operation, kind=trace.SpanKind.CLIENT, attributes={
        "db.system.name": "postgresql", "db.system": "postgresql", "db.operation.name": operation,
        "db.query.text": sql})


def traceparent() -> str | None:
    """The current span's W3C `traceparent`, to carry this trace to work that another process picks up later (the
    gateway's first request of a session); None when off or outside a trace."""
    if _tracer is None or not trace.get_current_span().is_recording():
        return None
    from opentelemetry import propagate

    carrier = {}
    propagate.inject(carrier)
    return carrier.get("traceparent")


def span_from(traceparent_value: str, name: str, *, start_ns: int, end_ns: int | None = None,
              attributes: dict | None = None) -> bool:
    """Record a finished span, child of the span a `traceparent()` came from, for work seen after the fact (HAProxy's
    log of a request). False when off or the value is not a traceparent."""
    if _tracer is None:
        return False
    from opentelemetry import propagate

    parent = propagate.extract({"traceparent": traceparent_value})
    if not trace.get_current_span(parent).get_span_context().is_valid:
        return False
    recorded = _tracer.start_span(name, context=parent, kind=trace.SpanKind.SERVER, attributes=attributes,
                                  start_time=start_ns)
    recorded.end(end_time=end_ns if end_ns is not None else time.time_ns())
    return True


def _sampler():
    """The sampler OTEL_TRACES_SAMPLER names (the SDK's default: every trace), except that a database or Redis call
    outside any traced work — a loop's poll, a heartbeat's lock, a command's query — starts no trace of its own: a
    one-span trace per statement is noise for the reader and the bulk of what a busy loop would export."""
    from opentelemetry.sdk.trace import sampling

    configured = sampling._get_from_env_or_default()

    class NoLoneClientCalls(sampling.Sampler):
        def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None,
                          trace_state=None):
            if kind == trace.SpanKind.CLIENT and not trace.get_current_span(
                    parent_context).get_span_context().is_valid:
                return sampling.SamplingResult(sampling.Decision.DROP)
            return configured.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

        def get_description(self):
            return f"NoLoneClientCalls{{{configured.get_description()}}}"

    return NoLoneClientCalls()


def _context_span_processor():
    """Every span started in this process gets the tenant, user, workspace and session of the work it is part of."""
    from opentelemetry.sdk.trace import SpanProcessor

    class ContextSpanProcessor(SpanProcessor):
        def on_start(self, span, parent_context=None):
            attributes = context.span_attributes()
            if attributes:
                span.set_attributes(attributes)

    return ContextSpanProcessor()
