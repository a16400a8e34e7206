"""Log lines of every process: one JSON object a line (`LOG_FORMAT=json`, production's default) or a human-readable line
(`console`, `make run`'s), both with the tenant, user, workspace, session and trace ids of the work they belong to.

Standard library logging only; `logging_config()` is the LOGGING setting (config/settings). Imports no Django model.
"""
import json
import logging
import time

from opentelemetry import trace

from core.context import context_get

# Ids every line carries when known, in this order; a line outside any request or task has none of them.
IDS = ("tenant_id", "user_id", "workspace_id", "session_id", "trace_id", "span_id")
# What LogRecord has of its own: anything else on a record came through `extra=` and is written out too.
_RECORD_FIELDS = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", *IDS}


class ContextFilter(logging.Filter):
    """Puts the current work's ids on the record (core.context), and the trace and span of the span in progress, or
    else of the one that resolved the tenant (a line written after the request's span has ended)."""

    def filter(self, record):
        current = context_get()
        span_context = trace.get_current_span().get_span_context()
        for key in IDS[:4]:
            setattr(record, key, current.get(key))
        if span_context.is_valid:
            record.trace_id = format(span_context.trace_id, "032x")
            record.span_id = format(span_context.span_id, "016x")
        else:
            record.trace_id, record.span_id = current.get("trace_id"), current.get("span_id")
        return True


class JsonFormatter(logging.Formatter):
    """{"time", "level", "logger", "message", the ids, what `extra=` added, "exception"} on one line."""

    converter = time.gmtime  # UTC, as the "Z" says

    def format(self, record):
        line = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in IDS:
            value = getattr(record, key, None)
            if value is not None:
                line[key] = value
        for key, value in vars(record).items():
            if key not in _RECORD_FIELDS and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)

    def formatTime(self, record, datefmt=None):
        seconds = self.converter(record.created)
        return f"{seconds.tm_year:04d}-{seconds.tm_mon:02d}-{seconds.tm_mday:02d}T{seconds.tm_hour:02d}:" \
               f"{seconds.tm_min:02d}:{seconds.tm_sec:02d}.{int(record.msecs):03d}Z"


class ConsoleFormatter(logging.Formatter):
    """`12:00:01 INFO workspaces.opening: message  tenant=3 user=7 trace=4bf9…` for a person at a terminal."""

    _SHORT = {"tenant_id": "tenant", "user_id": "user", "workspace_id": "workspace", "session_id": "session",
              "trace_id": "trace"}

    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")

    def format(self, record):
        text = super().format(record)
        ids = [f"{short}={getattr(record, key)}" for key, short in self._SHORT.items()
               if getattr(record, key, None) is not None]
        if not ids:
            return text
        first, newline, rest = text.partition("\n")  # after the message, before a traceback
        return f"{first}  [{' '.join(ids)}]{newline}{rest}"


FORMATTERS = {"json": JsonFormatter, "console": ConsoleFormatter}


def logging_config(*, log_format: str, level: str) -> dict:
    """The LOGGING setting: every line through one handler on stderr, in `log_format` ("json" or "console")."""
    if log_format not in FORMATTERS:
        raise ValueError(f"LOG_FORMAT must be one of {', '.join(FORMATTERS)}, not {log_format!r}")
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"line": {"()": FORMATTERS[log_format]}},
        "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "line", "filters": ["context"]}},
        "root": {"handlers": ["console"], "level": level},
        # xmlschema (under pysaml2) logs each XSD it loads at INFO.
        "loggers": {"django.db.backends": {"level": "WARNING"}, "xmlschema": {"level": "WARNING"}},
    }
