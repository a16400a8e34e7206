"""One trace follows an open (issue 15): the API request, the claim, the storage bind, the route, the token, their
PostgreSQL, Docker and HAProxy calls, and the gateway's first proxied request of the session; a cold open keeps it
across the Celery worker that starts the container. Every span carries the open's tenant.

Real OTLP/HTTP receiver on loopback (tests/otlp_receiver.py), real HAProxy, real tiny containers, real PostgreSQL and
Redis; telemetry is set up in this process from the OTEL_* variables as the web process does (config/wsgi.py).
"""
import time

import pytest

from core import telemetry
from tests.otlp_receiver import calls_of, telemetry_to
from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway_env, start_gateway, wait_until  # noqa: F401
from workspaces import pool, services
from workspaces.models import Session

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]

OPEN_STEPS = {"workspace.claim", "workspace.storage_bind", "workspace.route", "workspace.token"}


def _token_of(url):
    return url.split("token=", 1)[1]


def _by_name(spans):
    found = {}
    for s in spans:
        found.setdefault(s.name, []).append(s)
    return found


def test_the_trace_of_an_open_runs_from_the_api_to_the_first_proxied_request(
        receiver, monkeypatch, gateway_env, node, member, workspace, make_api_client):  # noqa: F811
    pool.pool_fill()
    with telemetry_to(receiver, monkeypatch):
        gateway = start_gateway(gateway_env)  # after the setup: its HAProxy logs first requests (gateway_config)
        try:
            assert gateway.cfg.trace_first_request
            response = make_api_client(member).post(f"/api/v1/workspaces/{workspace.pk}/open")
            assert response.status_code == 200, response.content
            body = response.json()
            page = gateway.get(workspace.host_key, "/", token=_token_of(body["url"]))
            assert page.status_code == 200 and "hearth tiny workspace" in page.text
            gateway.get(workspace.host_key, "/", token=_token_of(body["url"]))  # the second is not traced
            spans = receiver.wait_for(lambda got: any(s.name == "gateway.first_request" for s in got))
        finally:
            gateway.process.stop()
        services.session_close(session=Session.objects.get(pk=body["session"]), actor=member.user)

    server = next(s for s in spans if s.kind == 2 and "open" in (s.attributes.get("http.route") or s.name))
    trace = receiver.trace(server.trace_id)
    names = _by_name(trace)
    assert OPEN_STEPS <= names.keys(), sorted(names)
    tenant = str(workspace.tenant_id)
    expected = {"hearth.tenant_id": tenant, "hearth.user_id": str(member.user_id),
                "hearth.workspace_id": str(workspace.pk), "hearth.session_id": body["session"]}
    # The request's span gets the tenant where TenantScopedView resolves it; the steps, as children, all four ids.
    assert server.attributes["hearth.tenant_id"] == tenant and server.attributes["hearth.user_id"] == str(
        member.user_id)
    for name in OPEN_STEPS - {"workspace.claim"}:
        (step,) = names[name]
        assert step.parent_span_id == server.span_id, name
        assert {k: step.attributes.get(k) for k in expected} == expected, (name, step.attributes)
    (claim,) = names["workspace.claim"]
    assert claim.parent_span_id == server.span_id and claim.attributes["hearth.tenant_id"] == tenant
    # A step's own calls make no spans: each is listed on its step by name and duration (docs/OBSERVABILITY.md,
    # "Cost") — the claim's statement, the plan's resources in the cgroup, HAProxy's route.
    step_ids = {s.span_id for name in OPEN_STEPS for s in names[name]}
    assert [s.name for s in trace if s.parent_span_id in step_ids] == ["gateway.first_request"]
    (bind,), (route,) = names["workspace.storage_bind"], names["workspace.route"]
    assert any(name.startswith("postgresql.") for name in calls_of(claim)), claim.attributes
    assert "cgroup.write" in calls_of(bind), bind.attributes  # the plan's resources: a local engine's cgroup
    assert "haproxy.set map" in calls_of(route), route.attributes
    # The open's lookup and the session's liveness check after the route, prepared statements run under the request,
    # are listed on the request's span; the ORM's statements outside the steps (the token's lookup) are spans of the
    # psycopg instrumentation.
    assert server.attributes["hearth.calls"].count("postgresql.SELECT") >= 2, server.attributes
    assert any("db.statement" in s.attributes for s in trace if s.attributes.get("db.system") == "postgresql")
    # The gateway's first request: a child of the route, timed by HAProxy, with the open's ids; only one.
    (first,) = names["gateway.first_request"]
    assert first.parent_span_id == route.span_id
    assert {k: first.attributes.get(k) for k in expected} == expected
    assert first.attributes["http.response.status_code"] == 200 and first.attributes["url.path"] == "/"
    assert route.start_ns <= first.start_ns <= first.end_ns
    assert all(s.attributes.get("hearth.tenant_id") == tenant for s in trace if s.start_ns >= claim.start_ns)


@pytest.fixture
def empty_pool(tiny_template):
    tiny_template.warm_target = 0
    tiny_template.save()
    return tiny_template


def test_a_cold_open_keeps_its_trace_across_the_worker_that_starts_its_container(
        receiver, monkeypatch, live_db, gateway_env, node, empty_pool, member, workspace, make_api_client,  # noqa: F811
        tmp_path):
    from tenants.models import Plan
    from tests.workspaces.test_pool_crash import _env, _kill, _purge_queue, _worker

    _purge_queue()
    Plan.objects.filter(pk=member.tenant.plan_id).update(internet_access="open")
    with telemetry_to(receiver, monkeypatch):
        gateway = start_gateway(gateway_env)
        worker = _worker({**_env("", tmp_path / "failpoint"), "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": receiver.endpoint,
                          "OTEL_BSP_SCHEDULE_DELAY": "50"}, tmp_path / "worker.log")
        try:
            api = make_api_client(member)
            response = api.post(f"/api/v1/workspaces/{workspace.pk}/open")
            assert response.status_code == 202, response.content
            body = response.json()
            deadline = time.monotonic() + 60
            while api.get(f"/api/v1/sessions/{body['session']}").json()["state"] == "starting":
                assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()[-3000:]
                time.sleep(0.2)
            # Live once the worker attached the container; its bind and route follow at once.
            token = _token_of(body["url"])
            assert wait_until(lambda: gateway.get(workspace.host_key, "/", token=token).status_code == 200)
            spans = receiver.wait_for(lambda got: {"gateway.first_request", "workspace.cold_start",
                                                   "workspace.egress_grant"}
                                      <= {s.name for s in got if s.service == "hearth-worker"} | {
                                          s.name for s in got if s.name == "gateway.first_request"}, timeout=20)
        finally:
            _kill(worker)
            gateway.process.stop()
        services.session_close(session=Session.objects.get(pk=body["session"]), actor=member.user)

    server = next(s for s in spans if s.kind == 2 and "open" in (s.attributes.get("http.route") or s.name))
    trace = receiver.trace(server.trace_id)
    web, worker_spans = ({s.name for s in trace if s.service == service} for service in ("hearth-web", "hearth-worker"))
    # The web answered with the session `starting` and its "starting" route; the task went out in the same trace.
    assert {"workspace.route", "workspace.token", "apply_async/workspaces.tasks.session_start"} <= web, sorted(web)
    # The worker's task is a child of the publish, and the container's start, bind and route are in it.
    assert {"run/workspaces.tasks.session_start", "workspace.cold_start", "docker.create", "docker.start",
            "workspace.storage_bind", "workspace.route"} <= worker_spans, sorted(worker_spans)
    (publish,) = [s for s in trace if s.name == "apply_async/workspaces.tasks.session_start"]
    (run,) = [s for s in trace if s.name == "run/workspaces.tasks.session_start"]
    assert run.parent_span_id == publish.span_id
    tenant = str(workspace.tenant_id)
    # From the moment the task knows its session (it loads it first), in the task's own time.
    (cold,) = [s for s in trace if s.name == "workspace.cold_start"]
    in_task = [s for s in trace if s.service == "hearth-worker" and cold.start_ns <= s.start_ns <= run.end_ns]
    assert len(in_task) > 5 and all(s.attributes.get("hearth.tenant_id") == tenant for s in in_task)
    assert run.attributes.get("hearth.session_id") == body["session"]  # set on the task's span too
    # The first proxied request joins under the worker's route (the one with the container's address).
    (first,) = [s for s in trace if s.name == "gateway.first_request"]
    parent = next(s for s in trace if s.span_id == first.parent_span_id)
    assert parent.name == "workspace.route" and parent.service == "hearth-worker"
    # The Internet grant, made by the worker's granter thread after the bind, is in the trace under that bind.
    (grant,) = [s for s in trace if s.name == "workspace.egress_grant"]
    (bind,) = [s for s in trace if s.name == "workspace.storage_bind" and s.service == "hearth-worker"]
    assert grant.parent_span_id == bind.span_id and grant.attributes.get("hearth.session_id") == body["session"]


def test_off_nothing_is_instrumented_and_nothing_is_sent(receiver, monkeypatch, gateway_env, node, member,  # noqa: F811
                                                         workspace, make_api_client):
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", receiver.endpoint)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    telemetry.telemetry_shutdown()
    assert not telemetry.telemetry_setup(process="web")
    assert not DjangoInstrumentor().is_instrumented_by_opentelemetry
    pool.pool_fill()
    gateway = start_gateway(gateway_env)
    try:
        assert not gateway.cfg.trace_first_request and "first-requests" not in gateway.cfg.config_path.read_text()
        response = make_api_client(member).post(f"/api/v1/workspaces/{workspace.pk}/open")
        assert response.status_code == 200
        assert gateway.get(workspace.host_key, "/", token=_token_of(response.json()["url"])).status_code == 200
    finally:
        gateway.process.stop()
        telemetry.telemetry_shutdown()
    time.sleep(0.3)
    assert receiver.requests == 0
