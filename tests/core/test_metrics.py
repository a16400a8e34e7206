"""GET /metrics: who may read it, that it parses, that several processes' figures add up (prometheus_client's
multiprocess mode, with real processes and a real gunicorn), Celery's task failures and queue lag (real Celery
tracer, real Redis), and a failing collector costing only its own figures."""
import os
import signal
import subprocess
import sys
import time
import uuid

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured

from core import metrics
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, UserFactory
from tests.metrics_support import Scrape, scrape

OUTSIDE = {"REMOTE_ADDR": "203.0.113.7"}  # not loopback, not in METRICS_ALLOWED_NETWORKS
EXPECTED_FAMILIES = {
    "hearth_claim_duration_seconds", "hearth_cold_starts", "hearth_reclaims", "hearth_reconciler_fixes",
    "hearth_reconciler_last_success_timestamp_seconds", "hearth_pool_containers", "hearth_pool_warm_target",
    "hearth_node_healthy", "hearth_celery_task_failures", "hearth_celery_queue_length",
    "hearth_celery_queue_lag_seconds", "hearth_outbox_backlog", "hearth_billing_outbox_backlog",
    "hearth_billing_deliveries", "hearth_billing_dead_letters", "hearth_usage", "hearth_usage_events",
    "hearth_sampler_failures", "hearth_sampler_last_success_timestamp_seconds", "hearth_metrics_collector_up",
}


def _token_client(*, staff):
    membership = MembershipFactory(role="owner", user=UserFactory(is_staff=staff))
    return api_client_for(membership)


# --- access ---------------------------------------------------------------------------------------------------------


def test_loopback_reads_without_a_token_and_every_collector_answers(db, redis_url):
    result = scrape()
    up = result.series("hearth_metrics_collector_up")
    assert up and all(value == 1.0 for value in up.values()), up
    assert {dict(labels)["collector"] for labels in up} == {"pool", "nodes", "outbox", "billing_outbox",
                                                            "celery_queues"}


def test_anyone_else_without_a_token_is_refused_with_a_message(client, db):
    response = client.get("/metrics", **OUTSIDE)
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "metrics_forbidden" and "METRICS_ALLOWED_NETWORKS" in body["detail"]


def test_an_allowed_network_reads_without_a_token(client, db, settings, redis_url):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "203.0.113.0/24"]
    assert client.get("/metrics", **OUTSIDE).status_code == 200
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8"]
    assert client.get("/metrics", **OUTSIDE).status_code == 403


def test_a_malformed_allowed_network_says_what_is_wrong(client, db, settings):
    settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/33"]
    with pytest.raises(ImproperlyConfigured, match="METRICS_ALLOWED_NETWORKS"):
        client.get("/metrics", **OUTSIDE)


def test_a_staff_token_reads_from_anywhere(db, redis_url):
    response = _token_client(staff=True).get("/metrics", **OUTSIDE)
    assert response.status_code == 200
    assert "hearth_pool_containers" in Scrape(response.content.decode()).families


def test_a_member_token_without_staff_is_refused(db):
    response = _token_client(staff=False).get("/metrics", **OUTSIDE)
    assert response.status_code == 403 and response.json()["code"] == "metrics_forbidden"


def test_a_revoked_or_made_up_token_is_401(client, db):
    from tenants.services import api_token_create, api_token_revoke

    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer hth_nothing_like_a_token", **OUTSIDE)
    assert response.status_code == 401 and response.json()["code"] == "invalid_token"
    assert response["WWW-Authenticate"].startswith("Bearer")
    staff = MembershipFactory(role="owner", user=UserFactory(is_staff=True))
    token, plaintext = api_token_create(membership=staff, name="prometheus", actor=staff.user)
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {plaintext}", **OUTSIDE).status_code == 200
    api_token_revoke(token=token, actor=staff.user)
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {plaintext}", **OUTSIDE).status_code == 401


def test_behind_a_trusted_proxy_the_forwarded_client_counts_not_the_proxy(client, db, settings):
    # A reverse proxy on this host connects from loopback; once it is declared (the project's rule, allauth's
    # setting), the client it forwards for is the one checked.
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.7")
    assert response.status_code == 403


@pytest.mark.parametrize("header", ["HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"])
def test_a_request_an_undeclared_proxy_forwarded_from_loopback_needs_a_token(client, db, redis_url, header):
    """A reverse proxy on this host that nobody declared: every client it forwards arrives from loopback. Its
    forwarding header says so, and the request is treated as from outside."""
    value = "for=203.0.113.7" if header == "HTTP_FORWARDED" else "203.0.113.7"
    response = client.get("/metrics", REMOTE_ADDR="127.0.0.1", **{header: value})
    assert response.status_code == 403 and response.json()["code"] == "metrics_forbidden"
    assert client.get("/metrics", REMOTE_ADDR="127.0.0.1").status_code == 200


def test_an_ipv4_mapped_loopback_is_loopback_and_a_mapped_outsider_is_not(client, db, redis_url):
    assert client.get("/metrics", REMOTE_ADDR="::ffff:127.0.0.1").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="::ffff:203.0.113.7").status_code == 403


def test_only_get(client, db):
    assert client.post("/metrics").status_code == 405


# --- the exposition -----------------------------------------------------------------------------------------------


def test_it_parses_and_names_every_figure_with_the_hearth_prefix_and_a_unit(db, redis_url):
    from core.celery_metrics import _failures
    from metering import metrics as metering_metrics
    from workspaces import metrics as workspace_metrics

    # Series whose labels are only known when they happen (templates, tasks, tenants) appear with their first
    # figure; the rest (reasons, kinds, providers, samplers) exist at 0 from the start.
    workspace_metrics.CLAIM_SECONDS.labels("parse-check", "warm")
    workspace_metrics.COLD_STARTS.labels("parse-check")
    _failures().labels("parse-check")
    metering_metrics.USAGE.labels("other", "parse-check")
    metering_metrics.USAGE_EVENTS.labels("other", "parse-check")
    metering_metrics.SAMPLER_LAST_SUCCESS.labels("parse-check")
    result = scrape()
    missing = EXPECTED_FAMILIES - set(result.families)
    assert not missing, missing
    helps = [line.split()[2] for line in result.text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps)), "two figures share a name"
    for family in result.families.values():
        assert family.name.startswith("hearth_"), family.name
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name


def test_a_failing_collector_costs_only_its_own_figures(db, redis_url):
    class Broken:
        def collect(self):
            raise RuntimeError("the database went away")

    metrics.collector_register("broken", Broken())
    try:
        result = scrape()
    finally:
        metrics._collectors.pop("broken")
    assert result.value("hearth_metrics_collector_up", collector="broken") == 0.0
    assert result.value("hearth_metrics_collector_up", collector="pool") == 1.0


# --- several processes ----------------------------------------------------------------------------------------------


def _python(code):
    """Another process of this run: it inherits PROMETHEUS_MULTIPROC_DIR (test settings), as Hearth's processes do
    from theirs. Without Django (a second or more per process here): the figures are prometheus_client's."""
    done = subprocess.run([sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_two_processes_increments_add_up(db, redis_url):
    reason = f"mp-{uuid.uuid4().hex[:8]}"
    for _ in range(2):
        _python("from prometheus_client import Counter; "
                f"Counter('hearth_reclaims', 'x', ['reason']).labels({reason!r}).inc(3)")
    assert scrape().value("hearth_reclaims_total", reason=reason) == 6.0


def test_a_dead_process_live_gauges_go_and_a_start_forgets_ended_processes(tmp_path):
    pid = int(_python("import os; from prometheus_client import Counter, Gauge; "
                      "Gauge('hearth_test_live', 'x', multiprocess_mode='livesum').set(1); "
                      "Counter('hearth_cold_starts', 'x', ['template']).labels('x').inc(); print(os.getpid())"))
    directory = metrics.multiprocess_dir()
    assert (directory / f"gauge_livesum_{pid}.db").exists()
    metrics.process_dead(pid)
    assert not (directory / f"gauge_livesum_{pid}.db").exists()
    assert (directory / f"counter_{pid}.db").exists()  # its counts stay in the sums until the next start

    other = tmp_path / "metrics"
    other.mkdir()
    (other / f"counter_{pid}.db").write_bytes(b"")  # an ended process of a previous run
    (other / f"counter_{os.getpid()}.db").write_bytes(b"")  # a live one (the worker, when only the web restarts)
    assert metrics.multiprocess_dir_prepare(other) == 1
    assert [f.name for f in other.iterdir()] == [f"counter_{os.getpid()}.db"]


@pytest.mark.slow
def test_gunicorn_serves_metrics_from_its_workers_and_its_start_cleans_the_directory(db, tmp_path):
    # A real gunicorn with config/gunicorn.py (scripts/serve-web.sh's) and two workers, on a directory of its own:
    # the start removes an ended process's file, every worker answers /metrics, a killed worker is replaced.
    directory = tmp_path / "metrics"
    directory.mkdir()
    (directory / "counter_999999999.db").write_bytes(b"")  # no such process: removed at start
    port = _free_port()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test", "PROMETHEUS_MULTIPROC_DIR": str(directory),
           "DATABASE_URL": _test_database_url()}
    proc = subprocess.Popen(
        [os.path.join(os.path.dirname(sys.executable), "gunicorn"), "config.wsgi:application", "-c",
         "config/gunicorn.py", "--bind", f"127.0.0.1:{port}", "--workers", "2", "--threads", "1",
         "--graceful-timeout", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                first = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()[-2000:]
                time.sleep(0.2)
        assert first.status_code == 200
        assert not (directory / "counter_999999999.db").exists()
        workers = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                  text=True).stdout.split()]
        assert len(workers) == 2
        scraped = Scrape(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text)
        assert "hearth_pool_containers" in scraped.families
        os.kill(workers[0], signal.SIGKILL)  # the master's child_exit hook marks it dead (process_dead)
        assert httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    log = proc.stderr.read().decode()
    assert "Traceback" not in log, log[-3000:]
    assert "files of ended processes removed" in log


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _test_database_url():
    from django.db import connection

    s = connection.settings_dict
    return f"postgres://{s['USER']}@{s['HOST']}:{s['PORT'] or 5432}/{s['NAME']}"


# --- Celery -------------------------------------------------------------------------------------------------------


def test_a_failed_task_is_counted_by_name(db, redis_url):
    from config.celery import app

    name = f"tests.metrics.failing_{uuid.uuid4().hex[:6]}"

    @app.task(name=name)
    def failing():
        raise RuntimeError("boom")

    before = scrape().value("hearth_celery_task_failures_total", task=name)
    result = failing.apply()  # Celery's own tracer, as in a worker: it sends task_failure
    assert result.failed()
    assert scrape().value("hearth_celery_task_failures_total", task=name) == before + 1


def test_queue_length_and_lag_come_from_redis(db, redis_url, settings):
    import redis

    from config.celery import app

    queue = f"metrics-test-{uuid.uuid4().hex[:8]}"
    app.amqp.queues.select_add(queue)
    key = settings.CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] + queue
    broker = redis.Redis.from_url(redis_url)
    try:
        empty = scrape()
        assert empty.value("hearth_celery_queue_length", queue=queue, default=None) == 0.0
        assert empty.value("hearth_celery_queue_lag_seconds", queue=queue, default=None) == 0.0
        app.send_task("tests.metrics.nothing", queue=queue)
        app.send_task("tests.metrics.nothing", queue=queue)
        time.sleep(0.3)
        waiting = scrape()
        assert waiting.value("hearth_celery_queue_length", queue=queue) == 2.0
        assert 0.3 <= waiting.value("hearth_celery_queue_lag_seconds", queue=queue) < 30
    finally:
        broker.delete(key)
        app.amqp.queues.pop(queue, None)


@pytest.mark.slow
def test_a_real_worker_processes_failures_add_up_on_the_webs_metrics(db, redis_url):
    # A Celery worker with two pool processes, on a queue of its own (no other install's tasks), writing to this
    # run's directory: two failing tasks, whichever process ran each, read back as one sum on /metrics here.
    from django.conf import settings

    from config.celery import app

    name = f"metrics-{uuid.uuid4().hex[:8]}@{settings.HEARTH_INSTANCE}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-n", name, "-Q", f"{name}-only",
         "--pool", "prefork", "--concurrency", "2", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        cwd=settings.BASE_DIR, env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    task = "workspaces.tasks.pool_fill"
    try:
        deadline = time.monotonic() + 60
        while not app.control.ping(destination=[name], timeout=0.5):
            assert worker.poll() is None and time.monotonic() < deadline, worker.stderr.read().decode()[-2000:]
        before = scrape().value("hearth_celery_task_failures_total", task=task)
        for _ in range(2):  # an argument the task does not take: a TypeError in the worker, before any query
            app.send_task(task, kwargs={"no_such_argument": 1}, queue=f"{name}-only")
        deadline = time.monotonic() + 30
        while scrape().value("hearth_celery_task_failures_total", task=task) < before + 2:
            assert time.monotonic() < deadline, "the worker's failures never reached /metrics"
            time.sleep(0.2)
        assert scrape().value("hearth_celery_task_failures_total", task=task) == before + 2
    finally:
        worker.terminate()
        worker.wait(timeout=30)
