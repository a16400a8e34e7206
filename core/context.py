"""Who and what the current work is for — tenant, user, workspace, session — set once where each is resolved and
read by every log line (core.logs) and every span (core.telemetry), so no caller passes them around.

A context variable: each thread (a web worker's request, a Celery task) and each asyncio task has its own. It is
cleared where a unit of work starts (core.middleware.RequestContextMiddleware, the Celery task_prerun signal), so a
thread's next request never inherits the last one's tenant.
"""
from contextvars import ContextVar

from opentelemetry import trace

# Span attribute names: the same four on every span and log line (docs/OBSERVABILITY.md).
ATTRIBUTES = {"tenant_id": "hearth.tenant_id", "user_id": "hearth.user_id",
              "workspace_id": "hearth.workspace_id", "session_id": "hearth.session_id"}

_EMPTY: dict = {}
_current: ContextVar[dict] = ContextVar("hearth_context", default=_EMPTY)
# The same ids as span attributes, made once per change rather than once per span (core.telemetry's processor).
_attributes: ContextVar[dict] = ContextVar("hearth_context_attributes", default=_EMPTY)


def context_get() -> dict:
    """{"tenant_id", "user_id", "workspace_id", "session_id", "trace_id", "span_id"}: those known so far (never
    mutate it)."""
    return _current.get()


def context_set(**ids) -> None:
    """Add ids (tenant_id=, user_id=, workspace_id=, session_id=; None ones are skipped) to the current work's
    context, and put them on the span in progress (the request's or the task's). Spans started later get them from
    the span processor in core.telemetry."""
    ids = {key: str(value) for key, value in ids.items() if value is not None}
    if not ids:
        return
    unknown = ids.keys() - ATTRIBUTES.keys()
    if unknown:
        raise TypeError(f"context_set() takes {', '.join(ATTRIBUTES)}; not {', '.join(sorted(unknown))}")
    merged = {**_current.get(), **ids}
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({ATTRIBUTES[key]: value for key, value in ids.items()})
        # The ids of the span that resolved the tenant: log lines written after it ended (Django's own response log,
        # after the instrumentation's middleware closed the request's span) still name the request's trace.
        if "trace_id" not in merged:
            span_context = span.get_span_context()
            merged["trace_id"] = format(span_context.trace_id, "032x")
            merged["span_id"] = format(span_context.span_id, "016x")
    _current.set(merged)
    _attributes.set({name: merged[key] for key, name in ATTRIBUTES.items() if key in merged})


def context_clear() -> None:
    _current.set(_EMPTY)
    _attributes.set(_EMPTY)


def span_attributes() -> dict:
    """The context as span attributes ({"hearth.tenant_id": ..., ...}; never mutate it)."""
    return _attributes.get()
