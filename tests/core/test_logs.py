"""Log lines (core.logs): JSON or console, each with the ids of the work it belongs to; the log line of a request
carries its tenant and its trace id (issue 15)."""
import io
import json
import logging
import subprocess
import sys

import pytest
from django.conf import settings

from core import logs
from core.context import context_clear, context_set
from tests.factories import MembershipFactory
from tests.otlp_receiver import OtlpReceiver, telemetry_to


@pytest.fixture
def lines():
    """What the configured handler would write, for the `hearth.request` and `hearth.test` loggers, as JSON."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter())
    handler.addFilter(logs.ContextFilter())
    loggers = [logging.getLogger("hearth.request"), logging.getLogger("hearth.test")]
    for logger in loggers:
        logger.addHandler(handler)
    yield lambda: [json.loads(line) for line in out.getvalue().splitlines()]
    for logger in loggers:
        logger.removeHandler(handler)
    context_clear()


def test_a_json_line_has_the_work_ids_what_extra_adds_and_the_exception(lines):
    context_set(tenant_id=3, user_id=7, workspace_id=11, session_id="abc")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("hearth.test").exception("opening %s failed", "proj", extra={"node": "main"})
    (line,) = lines()
    assert line["message"] == "opening proj failed" and line["level"] == "ERROR" and line["logger"] == "hearth.test"
    assert (line["tenant_id"], line["user_id"], line["workspace_id"], line["session_id"]) == ("3", "7", "11", "abc")
    assert line["node"] == "main" and "ValueError: boom" in line["exception"]
    assert line["time"].endswith("Z") and "trace_id" not in line  # telemetry is off here: no trace to name


def test_the_console_line_is_for_a_person():
    record = logging.LogRecord("workspaces.opening", logging.INFO, __file__, 1, "opened %s", ("proj",), None)
    context_set(tenant_id=3)
    try:
        logs.ContextFilter().filter(record)
    finally:
        context_clear()
    assert logs.ConsoleFormatter().format(record).endswith("INFO workspaces.opening: opened proj  [tenant=3]")


def test_a_request_starts_with_no_context_of_the_previous_one(client, lines, db):
    context_set(tenant_id=99)  # left over from earlier work on this thread
    client.get("/healthz")
    (line,) = [line for line in lines() if line["logger"] == "hearth.request"]
    assert line["path"] == "/healthz" and line["status"] == 200 and "tenant_id" not in line


def test_the_log_line_of_a_request_carries_its_tenant_and_trace_id(make_api_client, lines, monkeypatch, db):
    member = MembershipFactory(role="member")
    receiver = OtlpReceiver()
    try:
        with telemetry_to(receiver, monkeypatch):
            response = make_api_client(member).get("/api/v1/workspaces")
            assert response.status_code == 200
            spans = receiver.wait_for(lambda got: any(s.kind == 2 for s in got))
    finally:
        receiver.close()
    (server,) = [s for s in spans if s.kind == 2]
    (line,) = [line for line in lines() if line["logger"] == "hearth.request"]
    assert line["path"] == "/api/v1/workspaces" and line["status"] == 200 and line["method"] == "GET"
    assert line["tenant_id"] == str(member.tenant_id) and line["user_id"] == str(member.user_id)
    assert line["trace_id"] == server.trace_id and line["span_id"] == server.span_id
    assert isinstance(line["duration_ms"], float)


def _logging_of(module, **env):
    code = (f"import {module} as s; from django.conf import settings; "
            "print(s.LOGGING['formatters']['line']['()'].__name__)")
    environ = {"PATH": "/usr/bin:/bin", "SECRET_KEY": "k" * 50, "ALLOWED_HOSTS": "hearth.example.com", **env}
    result = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, env=environ, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_production_logs_json_and_development_logs_for_a_person_unless_log_format_says():
    assert _logging_of("config.settings.production") == "JsonFormatter"
    assert _logging_of("config.settings.production", LOG_FORMAT="console") == "ConsoleFormatter"
    assert _logging_of("config.settings.base") == "ConsoleFormatter"
    with pytest.raises(ValueError, match="LOG_FORMAT must be one of json, console"):
        logs.logging_config(log_format="xml", level="INFO")
