"""The open's steps (core.telemetry.step): one span each, their own calls listed on it instead of spans of their own
— PostgreSQL, Redis, Docker and HAProxy alike — while the same calls outside a step keep their spans.

Real OTLP/HTTP receiver on loopback (tests/otlp_receiver.py), real PostgreSQL (Django's instrumented connection and
config/db.py's prepared statements) and real Redis.
"""
import pytest

from config import db
from core import context, telemetry
from core.redis_client import redis_client
from tenants.models import Tenant
from tests.otlp_receiver import calls_of, telemetry_to

pytestmark = pytest.mark.django_db


def _exported(receiver, names):
    telemetry.flush()
    return {s.name: s for s in receiver.wait_for(lambda got: names <= {s.name for s in got})}


def test_a_steps_calls_are_listed_on_it_and_make_no_spans(receiver, monkeypatch):
    with telemetry_to(receiver, monkeypatch):
        with telemetry.span("test.open"):
            context.context_set(tenant_id=3, user_id=7, workspace_id=11, session_id="s-1")
            with telemetry.step("workspace.route", {"hearth.route.starting": False}):
                with telemetry.span("haproxy.set map", child_only=True):  # Hearth's own helpers' spans
                    pass
                assert db.fetchone("SELECT 1", []) == (1,)  # a prepared statement (config/db.py)
                list(Tenant.objects.all()[:1])  # the ORM: the psycopg instrumentation's
                redis_client().set("hearth-test:telemetry-step", "1", ex=5)  # the Redis instrumentation's
                with telemetry.step("workspace.token"):  # a step inside a step is one of its calls
                    pass
            redis_client().get("hearth-test:telemetry-step")  # outside a step: the instrumentation's span
        spans = _exported(receiver, {"test.open", "workspace.route", "GET"})

    route = spans["workspace.route"]
    assert calls_of(route) == ["haproxy.set map", "postgresql.SELECT", "workspace.token"]
    assert all(call.endswith(" ms") for call in route.attributes["hearth.calls"].split(", "))
    assert route.attributes["hearth.route.starting"] is False
    assert {k: route.attributes[k] for k in ("hearth.tenant_id", "hearth.session_id")} == {
        "hearth.tenant_id": "3", "hearth.session_id": "s-1"}
    assert not [s.name for s in receiver.spans if s.parent_span_id == route.span_id]
    assert sorted(spans) == ["GET", "test.open", "workspace.route"]  # no SET, SELECT, haproxy or token span
    assert spans["GET"].parent_span_id == spans["test.open"].span_id


def test_a_prepared_statement_outside_a_step_is_listed_on_the_span_in_progress(receiver, monkeypatch):
    with telemetry_to(receiver, monkeypatch):
        with telemetry.span("test.open"):
            db.fetchone("SELECT 1", [])
            db.fetchone("SELECT 2", [])
        spans = _exported(receiver, {"test.open"})
    assert calls_of(spans["test.open"]) == ["postgresql.SELECT", "postgresql.SELECT"]
    assert len(receiver.spans) == 1


def test_a_step_that_raises_is_an_error_and_its_calls_so_far_are_listed(receiver, monkeypatch):
    with telemetry_to(receiver, monkeypatch):
        with pytest.raises(ValueError):
            with telemetry.span("test.open"):
                with telemetry.step("workspace.storage_bind"):
                    with telemetry.span("docker.update", child_only=True):
                        raise ValueError("engine away")
        spans = _exported(receiver, {"workspace.storage_bind"})
    bind = spans["workspace.storage_bind"]
    assert bind.status_code == 2 and calls_of(bind) == ["docker.update"]  # STATUS_CODE_ERROR


def test_a_sampled_out_step_makes_nothing_and_suppresses_its_calls(receiver, monkeypatch):
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    with telemetry_to(receiver, monkeypatch):
        with telemetry.step("workspace.claim") as step:
            assert not step.is_recording()
            redis_client().get("hearth-test:telemetry-step")
            with telemetry.span("docker.update", child_only=True):
                pass
        telemetry.flush()
    assert receiver.spans == []


def test_off_a_step_is_the_shared_no_op():
    assert not telemetry.enabled()
    assert telemetry.step("workspace.claim") is telemetry.span("workspace.token") is telemetry.db_span("SELECT 1")
