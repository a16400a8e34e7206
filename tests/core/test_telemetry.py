"""Telemetry's switch (core.telemetry): off unless the OTEL_* variables ask for an exporter; set up by the web
process's own entry point (config/wsgi.py) from those variables, exporting to a real OTLP/HTTP receiver on loopback."""
import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.db import connection

from core import telemetry


@pytest.mark.parametrize("environ, expected", [
    ({}, []),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, ["otlp"]),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
    ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, []),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, []),
    ({"OTEL_SDK_DISABLED": "false", "OTEL_TRACES_EXPORTER": "otlp"}, ["otlp"]),
])
def test_the_rule_that_turns_telemetry_on(environ, expected):
    assert telemetry.exporters(environ) == expected


def test_off_the_span_helpers_cost_nothing_and_carry_nothing():
    assert not telemetry.enabled()
    assert telemetry.span("workspace.claim") is telemetry.span("workspace.token")  # one shared no-op
    assert telemetry.traceparent() is None


# What the web process reports about itself once config/wsgi.py has loaded, then after one real request through its
# WSGI application (GET /readyz from loopback: it reads the database, Redis, the engine, the workers and the gateway).
_WSGI_PROBE = """
import io, json, sys
import config.wsgi
from django.conf import settings
import psycopg
from core import telemetry
from opentelemetry.instrumentation.django import DjangoInstrumentor
from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.instrumentation.celery import CeleryInstrumentor
statuses = []
environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/readyz", "SERVER_NAME": "localhost", "SERVER_PORT": "8000",
           "REMOTE_ADDR": "127.0.0.1", "wsgi.input": io.BytesIO(), "wsgi.url_scheme": "http", "HTTP_HOST": "localhost"}
b"".join(config.wsgi.application(environ, lambda status, headers: statuses.append(status)))
telemetry.flush()
print(json.dumps({
    "enabled": telemetry.enabled(),
    "middleware": [m for m in settings.MIDDLEWARE if "opentelemetry" in m],
    "instrumented": [i.__class__.__name__ for i in (DjangoInstrumentor(), PsycopgInstrumentor(), RedisInstrumentor(),
                                                  CeleryInstrumentor()) if i.is_instrumented_by_opentelemetry],
    "psycopg_connect_wrapped": hasattr(psycopg.connect, "__wrapped__"),
    "status": statuses,
}))
"""


def _web_process(**otel):
    params = connection.settings_dict
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(DJANGO_SETTINGS_MODULE="config.settings.base", LOG_LEVEL="WARNING",
               DATABASE_URL=f"postgres://{params['USER']}@{params['HOST']}:{params['PORT'] or 5432}/{params['NAME']}",
               **otel)
    result = subprocess.run([sys.executable, "-c", _WSGI_PROBE], cwd=settings.BASE_DIR, env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_web_process_is_not_instrumented_and_sends_nothing_by_default(receiver, db):
    # The receiver's address is even given, but nothing asks for an exporter: OTEL_TRACES_EXPORTER=none wins.
    seen = _web_process(OTEL_TRACES_EXPORTER="none", OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint)
    assert len(seen.pop("status")) == 1  # it answered
    assert seen == {"enabled": False, "middleware": [], "instrumented": [], "psycopg_connect_wrapped": False}
    assert receiver.requests == 0 and receiver.spans == []


def test_the_web_process_set_up_by_the_environment_exports_its_request_spans(receiver, db):
    # No OTEL_TRACES_EXPORTER: the endpoint alone turns it on. The sampler is the SDK's, from its variable.
    seen = _web_process(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=receiver.endpoint, OTEL_BSP_SCHEDULE_DELAY="50",
                        OTEL_TRACES_SAMPLER="parentbased_always_on")
    assert seen["enabled"] and len(seen["status"]) == 1
    assert seen["middleware"] == ["opentelemetry.instrumentation.django.middleware.otel_middleware._DjangoMiddleware"]
    assert set(seen["instrumented"]) == {"DjangoInstrumentor", "PsycopgInstrumentor", "RedisInstrumentor",
                                         "CeleryInstrumentor"}
    assert seen["psycopg_connect_wrapped"]
    spans = receiver.wait_for(lambda spans: any(s.kind == 2 for s in spans))  # SERVER
    server = next(s for s in spans if s.kind == 2)
    assert server.service == "hearth-web" and server.resource["hearth.process"] == "web"
    assert server.attributes.get("http.route") == "readyz" or "readyz" in server.name, server
    # The readiness check's PostgreSQL and Redis calls are children of the request's span.
    children = [s for s in spans if s.parent_span_id == server.span_id]
    assert any(s.attributes.get("db.system") == "postgresql" for s in children), [s.name for s in children]
    assert any(s.attributes.get("db.system") == "redis" for s in children), [s.name for s in children]
