"""Health: GET /healthz, the cheap liveness check anyone may call, and GET /readyz, the deep check of the database,
Redis, the Docker engine, the Celery workers and the gateway, for loopback clients and staff only."""
import ipaddress
import time

from django.conf import settings
from django.db import connection
from django.http import Http404, JsonResponse
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


def _gateway():
    # Imported here: core depends on no app at import time, and only this check needs the gateway's client.
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.runtime_api import RuntimeAPI

    if not RuntimeAPI(gateway_config().admin_socket, timeout=1).ping():
        raise RuntimeError("the gateway's admin socket does not answer")
    return None


CHECKS = {"database": _database, "redis": _redis, "docker": _docker, "workers": _workers, "gateway": _gateway}


@require_GET
def healthz(request):
    # Liveness only: the process answers. No query, no network call, nothing about what runs behind it (/readyz).
    return JsonResponse({"status": "ok"})


def _loopback(request):
    try:
        return ipaddress.ip_address(request.META.get("REMOTE_ADDR", "")).is_loopback
    except ValueError:
        return False


@require_GET
def readyz(request):
    # Versions, worker names and errors are for operators: anyone else finds nothing here.
    if not _loopback(request) and not getattr(getattr(request, "user", None), "is_staff", False):
        raise Http404
    checks = {name: _check(fn) for name, fn in CHECKS.items()}
    ok = all(c["ok"] for c in checks.values())
    return JsonResponse({"status": "ok" if ok else "degraded", "checks": checks}, status=200 if ok else 503)
