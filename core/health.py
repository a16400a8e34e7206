"""GET /healthz: the state of the database, Redis, the Docker engine and the Celery workers."""
import time

from django.conf import settings
from django.db import connection
from django.http import JsonResponse
from django.views.decorators.http import require_GET


def _check(fn):
    started = time.perf_counter()
    try:
        detail = fn()
    except Exception as exc:  # a health check reports every failure, whatever it is
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
    result = {"ok": True, "ms": round((time.perf_counter() - started) * 1000, 1)}
    if detail:
        result.update(detail)
    return result


def _database():
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return {"vendor": connection.vendor}


def _redis():
    import redis

    client = redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1)
    client.ping()
    return None


def _docker():
    import docker

    client = docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=2)
    try:
        return {"version": client.version().get("Version")}
    finally:
        client.close()


def _workers():
    from config.celery import app

    replies = app.control.ping(timeout=0.5) or []
    if not replies:
        raise RuntimeError("no Celery worker answered")
    return {"count": len(replies), "names": sorted(name for reply in replies for name in reply)}


CHECKS = {"database": _database, "redis": _redis, "docker": _docker, "workers": _workers}


@require_GET
def healthz(request):
    checks = {name: _check(fn) for name, fn in CHECKS.items()}
    ok = all(c["ok"] for c in checks.values())
    # 200 whenever the web process can answer; "status" says whether everything behind it is well.
    return JsonResponse({"status": "ok" if ok else "degraded", "checks": checks})
