"""GET /healthz against the real PostgreSQL, Redis, Docker engine and a real Celery worker."""
import os
import subprocess
import sys
import time
import uuid

import pytest
from django.conf import settings

from config.celery import app

pytestmark = pytest.mark.django_db


def test_healthz_reports_real_services_ok(client, redis_url, docker_client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/json"
    checks = response.json()["checks"]
    assert set(checks) == {"database", "redis", "docker", "workers"}
    assert checks["database"]["ok"] and checks["database"]["vendor"] == "postgresql"
    assert checks["redis"]["ok"], checks["redis"]
    assert checks["docker"]["ok"] and checks["docker"]["version"] == docker_client.version()["Version"]
    assert all(isinstance(c["ms"], float) for c in checks.values() if c["ok"])


def test_healthz_dead_redis_is_degraded_but_answers_200(client, settings, redis_url):
    settings.REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["checks"]["redis"]["ok"] is False
    assert "Connection" in body["checks"]["redis"]["error"]
    assert body["checks"]["database"]["ok"] is True


def test_healthz_dead_docker_is_degraded(client, settings):
    settings.DOCKER_HOST = "unix:///nonexistent/docker.sock"
    body = client.get("/healthz").json()
    assert body["status"] == "degraded" and body["checks"]["docker"]["ok"] is False


def test_healthz_only_answers_get(client):
    assert client.post("/healthz").status_code == 405


@pytest.mark.slow
def test_healthz_sees_a_real_worker(client, redis_url):
    # The worker listens on a queue of its own so it never takes tasks of other installs sharing this Redis;
    # it still answers the broadcast ping, under a name that only this test uses.
    name = f"healthz-{uuid.uuid4().hex[:8]}@{settings.HEARTH_INSTANCE}"
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
        body = client.get("/healthz").json()
        assert body["checks"]["workers"]["ok"], body
        assert name in body["checks"]["workers"]["names"]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
