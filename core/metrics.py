"""Prometheus metrics: prometheus_client's multiprocess mode for every Hearth process, the registry of scrape-time
collectors the apps fill, and GET /metrics with its access rule (docs/OBSERVABILITY.md "## Metrics").

Counters, histograms and gauges are declared in the app whose concept they measure (`<app>/metrics.py`); each process
writes them to its own file under PROMETHEUS_MULTIPROC_DIR, and /metrics adds up every process's files. Figures that
are a snapshot of the database (the pool, the outboxes, the nodes, Celery's queues) are computed at scrape time by
the collectors registered here, one cheap query each, instead of being pushed from every process.
"""
import ipaddress
import logging
import os
from functools import cache
from pathlib import Path

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, PermissionDenied
from django.http import HttpResponse, JsonResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from core.celery_metrics import QueueCollector

log = logging.getLogger(__name__)


# --- the multiprocess directory --------------------------------------------------------------------------------------


def multiprocess_dir() -> Path | None:
    """Where every process writes its figures (settings set PROMETHEUS_MULTIPROC_DIR before prometheus_client loads)."""
    value = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    return Path(value) if value else None


def multiprocess_active() -> bool:
    # prometheus_client picks its value class once, at import: the variable must have been set before that.
    return values.ValueClass is not values.MutexValue


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def multiprocess_dir_prepare(path: Path | None = None) -> int:
    """At a web or worker start: the directory exists and keeps no file of a process that is gone. Returns the files
    removed. A previous run's figures start again from zero (Prometheus takes it as a restart); the files of live
    processes (the worker, when only the web restarts) stay, so what they counted is never lost."""
    path = path or multiprocess_dir()
    if path is None:
        return 0
    path.mkdir(parents=True, exist_ok=True)
    removed = 0
    for file in path.glob("*.db"):
        pid = file.stem.rsplit("_", 1)[-1]
        if pid.isdigit() and not _pid_alive(int(pid)):
            file.unlink(missing_ok=True)
            removed += 1
    return removed


def process_dead(pid: int) -> None:
    """A web or worker process ended (gunicorn's `child_exit`, Celery's process shutdown): its live gauges go; its
    counters stay in the sums until the next start."""
    path = multiprocess_dir()
    if path is not None and path.is_dir():
        mark_process_dead(pid, str(path))


# --- scrape-time collectors ---------------------------------------------------------------------------------------

_collectors: dict[str, object] = {}


def collector_register(name: str, collector) -> None:
    """A collector (an object with `collect()` yielding metric families) run at each scrape; apps register theirs
    in AppConfig.ready(). Registering a name again replaces it."""
    _collectors[name] = collector


collector_register("celery_queues", QueueCollector())


class _Guarded:
    """Runs the registered collectors; one that fails (the database or Redis is down) is reported as
    hearth_metrics_collector_up{collector} 0 instead of failing the whole scrape."""

    def collect(self):
        up = GaugeMetricFamily("hearth_metrics_collector_up",
                               "1 if the scrape-time collector answered on this scrape, 0 if it failed.",
                               labels=["collector"])
        for name, collector in sorted(_collectors.items()):
            try:
                families = list(collector.collect())
            except Exception:  # any failure: the other figures are still worth serving
                log.warning("metrics collector %s failed", name, exc_info=True)
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            yield from families
        yield up


def exposition() -> bytes:
    """The Prometheus text of every process's figures and of the scrape-time collectors."""
    registry = CollectorRegistry(auto_describe=False)
    path = multiprocess_dir()
    if multiprocess_active() and path is not None:
        path.mkdir(parents=True, exist_ok=True)
        MultiProcessCollector(registry, path=str(path))
        text = b""
    else:  # prometheus_client was loaded before the variable was set: this process's own figures only
        text = generate_latest(REGISTRY)
    registry.register(_Guarded())
    return text + generate_latest(registry)


# --- GET /metrics and who may read it -------------------------------------------------------------------------------


@cache
def _networks(value: tuple) -> tuple:
    try:
        return tuple(ipaddress.ip_network(entry.strip(), strict=False) for entry in value if entry.strip())
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_NETWORKS: {exc} (a comma-separated list of CIDRs)") from None


def allowed_networks() -> tuple:
    return _networks(tuple(settings.METRICS_ALLOWED_NETWORKS))


def client_address(request):
    """The client's address under the project's trusted-proxy rule (allauth's: REMOTE_ADDR unless
    ALLAUTH_TRUSTED_PROXY_COUNT or ALLAUTH_TRUSTED_CLIENT_IP_HEADER say a proxy of ours is in front), or None."""
    from allauth.account.adapter import get_adapter  # loads allauth's models: not at this module's import

    try:
        return ipaddress.ip_address(get_adapter(request).get_client_ip(request))
    except (PermissionDenied, ValueError):
        return None


def address_trusted(address) -> bool:
    """Loopback and METRICS_ALLOWED_NETWORKS (a Prometheus on the private network) read without a token."""
    if address is None:
        return False
    if getattr(address, "ipv4_mapped", None) is not None:  # ::ffff:a.b.c.d from a dual-stack socket
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    return any(address.version == net.version and address in net for net in allowed_networks())


def _refused(status, code, detail):
    response = JsonResponse({"code": code, "detail": detail}, status=status)
    if status == 401:
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
    return response


def _bearer(request):
    header = request.headers.get("Authorization", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credentials.strip()


# Headers a reverse proxy adds: their presence says the request was forwarded, whatever REMOTE_ADDR says.
_FORWARDING_HEADERS = ("X-Forwarded-For", "Forwarded", "X-Real-IP")


def forwarded_by_an_unknown_proxy(request) -> bool:
    """A proxy forwarded this request but none is declared (ALLAUTH_TRUSTED_PROXY_COUNT / _CLIENT_IP_HEADER): its
    REMOTE_ADDR is the proxy's (loopback, for one on this host), not the client's, so it is no reason to trust."""
    declared = settings.ALLAUTH_TRUSTED_PROXY_COUNT or settings.ALLAUTH_TRUSTED_CLIENT_IP_HEADER
    return not declared and any(header in request.headers for header in _FORWARDING_HEADERS)


@require_GET
def metrics_view(request):
    if forwarded_by_an_unknown_proxy(request) or not address_trusted(client_address(request)):
        plaintext = _bearer(request)
        if plaintext is None:
            return _refused(403, "metrics_forbidden", "Metrics are readable from loopback, from "
                            "METRICS_ALLOWED_NETWORKS, or with a staff user's API token (Authorization: Bearer).")
        # Here, not at the top: gunicorn's master imports this module (config/gunicorn.py) before the apps load.
        from tenants import policy
        from tenants.exceptions import Forbidden
        from tenants.tokens import api_token_authenticate

        token = api_token_authenticate(plaintext)
        if token is None:
            return _refused(401, "invalid_token", "Invalid or revoked API token.")
        try:
            policy.api_token_sso_check(token)
        except Forbidden as exc:
            return _refused(401, exc.code, exc.message)
        if not policy.can_read_metrics(token.membership.user):
            return _refused(403, "metrics_forbidden", "Only a staff user's API token can read the metrics.")
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_PLAIN_0_0_4)
