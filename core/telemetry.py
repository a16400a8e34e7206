"""OpenTelemetry traces for every Hearth process: set up once per process from the standard OTEL_* variables, off
unless an exporter is asked for, and the few helpers Hearth's own code makes spans with (docs/OBSERVABILITY.md).

On when `OTEL_TRACES_EXPORTER` names `otlp` (or `console`), or, with it unset, when `OTEL_EXPORTER_OTLP_ENDPOINT` or
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turns it off
whatever else is set. Off, nothing is instrumented and `span()` hands back one shared no-op context manager.
Where it is called: config/wsgi.py and config/asgi.py (web, runserver included), config/celery.py
(`worker_process_init`, after the fork), `manage.py gateway` and `manage.py engine_events`, bench/claim.py.
"""
import contextlib
import contextvars
import functools
import logging
import os
import time

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY  # what the instrumentations check (and the SDK sets)

from core import context

log = logging.getLogger(__name__)

TRACER_NAME = "hearth"
_NOOP = contextlib.nullcontext()

_tracer = None  # a Tracer once set up in this process
_STEP_CALLS = otel_context.create_key("hearth.step_calls")  # the calls of the step in progress (see step())
CALLS = "hearth.calls"  # the attribute listing a span's calls that made no span of their own
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
            from core.otlp import SpanExporter  # the official OTLP/HTTP exporter, with a faster encoding

            exporter = SpanExporter()  # OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT, _HEADERS, _TIMEOUT
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
    """`with span("workspace.cold_start"):` a span of Hearth's own work under the current one; a shared no-op when
    off. `child_only`: only inside traced work (a call made on its own, e.g. a heartbeat ping, makes no trace).
    Inside a step() it makes no span: it is one of the step's calls."""
    if _tracer is None:
        return _NOOP
    calls = otel_context.get_value(_STEP_CALLS)
    if calls is not None:
        return _Call(calls, name)
    if child_only and not trace.get_current_span().is_recording():
        return _NOOP
    return _tracer.start_as_current_span(name, attributes=attributes)


def context_handoff() -> contextvars.Context:
    """A copy of this thread's context for work handed to another thread (the open's Internet grant): its spans are
    children of the current span, but not calls of the step in progress, which has ended by then (nor suppressed)."""
    handed = contextvars.copy_context()
    if _tracer is not None and otel_context.get_value(_STEP_CALLS) is not None:
        handed.run(_step_leave)
    return handed


def _step_leave():
    current = otel_context.set_value(_STEP_CALLS, None)
    otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, False, current))


def step(name: str, attributes: dict | None = None):
    """`with step("workspace.claim"):` one step of the open (claim, storage bind, route, token): a span under the
    current one whose own calls make no spans: Hearth's (span(), db_span(): PostgreSQL, Docker, HAProxy) are listed
    on it instead, by name and duration, in one attribute (`hearth.calls`), and the instrumentations' (psycopg,
    Redis, Celery) are suppressed. A span cost 50-70 µs of CPU from its start to its export, and the calls were two
    thirds of an open's spans (docs/OBSERVABILITY.md, "Cost"). A shared no-op when off; one of the calls when inside
    another step."""
    if _tracer is None:
        return _NOOP
    calls = otel_context.get_value(_STEP_CALLS)
    if calls is not None:
        return _Call(calls, name)
    return _Step(name, attributes)


class _Step:
    __slots__ = ("name", "attributes", "span", "calls", "token")

    def __init__(self, name, attributes):
        self.name, self.attributes = name, attributes

    def __enter__(self):
        # start_span and one attach (the span, the suppression and the calls' list together), not
        # start_as_current_span's generator and use_span.
        self.span = span = _tracer.start_span(self.name, attributes=self.attributes)
        current = otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True, trace.set_span_in_context(span))
        if span.is_recording():  # sampled out: its calls make nothing either
            self.calls = []
            current = otel_context.set_value(_STEP_CALLS, self.calls, current)
        else:
            self.calls = None
        self.token = otel_context.attach(current)
        return span

    def __exit__(self, exc_type, exc, tb):
        otel_context.detach(self.token)
        span, calls = self.span, self.calls
        if calls is not None:
            if exc is not None:  # as use_span records it
                span.record_exception(exc)
                span.set_status(trace.Status(trace.StatusCode.ERROR, f"{exc_type.__name__}: {exc}"))
            if calls:  # one string: an attribute costs its encoding per value, an array's per element
                span.set_attribute(CALLS, ", ".join(_call_text(name, ns) for name, ns in calls))
        span.end()
        return False


def _call_text(name, ns):
    return f"{name} {ns / 1e6:.3f} ms"


class _Call:
    """One call of a step (`target`: the step's list) or of a span that is not a step (`_SpanCall`: the request's),
    recorded by name and duration when it returns (or raises)."""
    __slots__ = ("target", "name", "started")

    def __init__(self, target, name):
        self.target, self.name = target, name

    def __enter__(self):
        self.started = time.perf_counter_ns()
        return trace.INVALID_SPAN

    def __exit__(self, *exc):
        self._record(time.perf_counter_ns() - self.started)
        return False

    def _record(self, ns):
        self.target.append((self.name, ns))


class _SpanCall(_Call):
    """Added to the span's `hearth.calls` at once: the span has no end of a step to list its calls at."""
    __slots__ = ()

    def _record(self, ns):
        text = _call_text(self.name, ns)
        listed = self.target.attributes.get(CALLS)
        self.target.set_attribute(CALLS, f"{listed}, {text}" if listed else text)


@functools.lru_cache(maxsize=256)  # a handful of constant statements
def _statement_name(sql: str) -> str:
    return "postgresql." + (sql.lstrip().split(None, 1)[0].upper() if sql.strip() else "SQL")


def db_span(sql: str):
    """A statement that config/db.py runs on its own cursor (the open's lookup and claim, the hot path's prepared
    statements), which the psycopg instrumentation does not see: listed on the span in progress as
    `postgresql.<operation>` with its duration (`hearth.calls`), not a span of its own. Inside traced work only."""
    if _tracer is None:
        return _NOOP
    calls = otel_context.get_value(_STEP_CALLS)
    if calls is not None:
        return _Call(calls, _statement_name(sql))
    current = trace.get_current_span()
    if not current.is_recording():
        return _NOOP
    return _SpanCall(current, _statement_name(sql))


def traceparent() -> str | None:
    """The current span's W3C `traceparent`, to carry this trace to work that another process picks up later (the
    gateway's first request of a session); None when off or outside a trace."""
    if _tracer is None:
        return None
    span = trace.get_current_span()
    if not span.is_recording():
        return None
    # What propagate.inject would write for it (its tracestate aside), without the global propagators' work.
    span_context = span.get_span_context()
    return f"00-{span_context.trace_id:032x}-{span_context.span_id:016x}-{span_context.trace_flags:02x}"


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
