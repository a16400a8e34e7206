"""/healthz (liveness: cheap, nothing inside) and /readyz (readiness: the real PostgreSQL, Redis, Docker engine,
Celery workers and gateway; loopback and staff only)."""
import os
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings

from config.celery import app
from tests.factories import UserFactory

pytestmark = pytest.mark.django_db

OUTSIDE = {"REMOTE_ADDR": "203.0.113.7"}  # not loopback


def test_healthz_is_cheap_and_shows_nothing_inside(client, settings, django_assert_num_queries):
    # Everything behind the web process down: liveness is still fine, and says nothing about it.
    settings.REDIS_URL = "redis://127.0.0.1:1/0"
    settings.DOCKER_HOST = "unix:///nonexistent/docker.sock"
    with django_assert_num_queries(0):
        response = client.get("/healthz", **OUTSIDE)
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    assert response.json() == {"status": "ok"}


def test_healthz_answers_within_5_ms(client):
    client.get("/healthz")
    timings = []
    for _ in range(50):
        started = time.perf_counter()
        client.get("/healthz", **OUTSIDE)
        timings.append(time.perf_counter() - started)
    assert sorted(timings)[25] < 0.005, f"p50 {sorted(timings)[25] * 1000:.2f} ms"


def test_healthz_and_readyz_only_answer_get(client):
    assert client.post("/healthz").status_code == 405
    assert client.post("/readyz").status_code == 405


def test_readyz_reports_real_services_to_loopback(client, redis_url, docker_client):
    response = client.get("/readyz", REMOTE_ADDR="127.0.0.1")
    assert response["Content-Type"] == "application/json"
    checks = response.json()["checks"]
    assert set(checks) == {"database", "redis", "docker", "workers", "gateway"}
    assert checks["database"]["ok"] and checks["database"]["vendor"] == "postgresql"
    assert checks["redis"]["ok"], checks["redis"]
    assert checks["docker"]["ok"] and checks["docker"]["version"] == docker_client.version()["Version"]
    assert all(isinstance(c["ms"], float) for c in checks.values() if c["ok"])


def test_readyz_is_refused_to_anyone_else_and_open_to_staff(client):
    assert client.get("/readyz", **OUTSIDE).status_code == 404
    client.force_login(UserFactory())
    assert client.get("/readyz", **OUTSIDE).status_code == 404
    client.force_login(UserFactory(is_staff=True))
    response = client.get("/readyz", **OUTSIDE)
    assert response.status_code in (200, 503) and "checks" in response.json()


def test_readyz_dead_redis_is_503_and_says_which(client, settings, redis_url):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_readyz_dead_docker_is_503(client, settings):
    settings.DOCKER_HOST = "unix:///nonexistent/docker.sock"
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["docker"]["ok"] is False


def test_readyz_without_a_gateway_is_503(client, settings, tmp_path):
    settings.GATEWAY_RUN_DIR = str(tmp_path)  # no admin socket there
    response = client.get("/readyz")
    assert response.status_code == 503 and response.json()["checks"]["gateway"]["ok"] is False


@pytest.mark.slow
def test_readyz_sees_a_real_worker(client, redis_url):
    # The worker listens on a queue of its own so it never takes tasks of other installs sharing this Redis;
    # it still answers the broadcast ping, under a name that only this test uses.
    name = f"readyz-{uuid.uuid4().hex[:8]}@{settings.HEARTH_INSTANCE}"
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}
    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-n", name, "-Q", f"{name}-only",
         "--pool", "solo", "--without-mingle", "--without-gossip", "--loglevel", "WARNING"],
        cwd=settings.BASE_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not app.control.ping(destination=[name], timeout=0.5):
            assert worker.poll() is None, worker.stderr.read().decode()[-2000:]
        body = client.get("/readyz").json()
        assert body["checks"]["workers"]["ok"], body
        assert name in body["checks"]["workers"]["names"]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
