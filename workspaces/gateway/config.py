"""The gateway's HAProxy configuration: rendered by Hearth from a template, with its pages and route map."""
import os
import subprocess
from dataclasses import dataclass, field, replace
from pathlib import Path

from django.conf import settings
from django.template.loader import render_to_string

from core import telemetry
from workspaces.gateway import egress_log
from workspaces.gateway.tokens import SigningKey, signing_keys

COOKIE_NAME = "hearth_gw"
# Under HTTPS the __Host- prefix makes browsers refuse the cookie from anything but this exact host (no Domain,
# Secure, Path=/), so a page on another workspace's host cannot plant one here (cookie tossing).
SECURE_COOKIE_NAME = "__Host-hearth_gw"


def cookie_name(scheme: str) -> str:
    return SECURE_COOKIE_NAME if scheme == "https" else COOKIE_NAME
OPEN_PATH = "/__hearth/open"
# code-server (VS Code) serves its build under /stable-<commit>/static/ with a one-year cache lifetime.
STATIC_PATH_REGEX = r"^/(stable|insider)-[0-9a-f]+/static/"
JWT_SHAPE_REGEX = r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$"


@dataclass(frozen=True)
class GatewayConfig:
    run_dir: Path
    port: int
    bind_address: str = "*"
    gateway_host: str = "localhost"
    scheme: str = "http"
    audience: str = "hearth-gateway"
    issuer: str = "hearth"
    portal_url: str = "http://localhost:8000"
    stats_port: int = 0  # HAProxy's stats page and Prometheus exporter (0: none), on stats_address
    stats_address: str = "127.0.0.1"
    tls_cert: str = ""  # PEM with certificate + key for *.<gateway host>; empty: plain HTTP (or TLS in front)
    maxconn: int = 8000
    # One thread by default: HAProxy shares the machine's cores with the workspaces, and on 2 shared cores a
    # second thread cost more CPU per request (wake-ups, locks) than it added; one does about 40k checked req/s.
    nbthread: int = 1  # 0: HAProxy's default (one per CPU)
    timeout_connect: str = "2s"
    timeout_tunnel: str = "1h"
    hard_stop_after: str = "1h"
    table_size: str = "200k"
    table_expire: str = "2d"
    cache_total_mb: int = 512
    cache_max_object_bytes: int = 64 * 1024 * 1024
    cache_max_age: int = 86400
    token_cache: bool = True  # remember tokens that passed every check for a route (see the template)
    token_cache_size: str = "20k"
    token_cache_expire: str = "10m"
    # Log each session's first proxied request to the gateway process, which adds it to the open's trace
    # (workspaces/gateway/tracing.py); on with telemetry.
    trace_first_request: bool = False
    static_compression: bool = True  # gzip versioned assets in HAProxy (level 1) instead of code-server (level 6)
    extra: dict = field(default_factory=dict)

    @property
    def config_path(self) -> Path:
        return self.run_dir / "haproxy.cfg"

    @property
    def admin_socket(self) -> Path:
        return self.run_dir / "admin.sock"

    @property
    def master_socket(self) -> Path:
        return self.run_dir / "master.sock"

    @property
    def routes_map(self) -> Path:
        return self.run_dir / "routes.map"

    @property
    def trace_socket(self) -> Path:
        return self.run_dir / "first-requests.sock"

    @property
    def pid_file(self) -> Path:
        return self.run_dir / "haproxy.pid"

    @property
    def pages_dir(self) -> Path:
        return self.run_dir / "pages"


def gateway_config(**overrides) -> GatewayConfig:
    """The configuration from settings; tests pass their own run dir and ports."""
    cfg = GatewayConfig(
        run_dir=Path(settings.GATEWAY_RUN_DIR),
        port=settings.HEARTH_GATEWAY_PORT,
        gateway_host=settings.GATEWAY_HOST.lower(),
        scheme=settings.GATEWAY_SCHEME,
        audience=settings.GATEWAY_AUDIENCE,
        issuer=settings.GATEWAY_ISSUER,
        portal_url=settings.HEARTH_BASE_URL,
        stats_port=settings.GATEWAY_STATS_PORT,
        stats_address=getattr(settings, "GATEWAY_STATS_ADDRESS", "127.0.0.1"),
        token_cache=getattr(settings, "GATEWAY_TOKEN_CACHE", True),
        tls_cert=getattr(settings, "GATEWAY_TLS_CERT", ""),
        nbthread=getattr(settings, "GATEWAY_NBTHREAD", 1),
        trace_first_request=telemetry.enabled(),
    )
    return replace(cfg, **overrides) if overrides else cfg


# (file stem, status, title, message, link text, meta refresh seconds)
PAGES = {
    "starting": (503, "Your workspace is starting", "It will open by itself in a moment.", "", 2),
    "gone": (410, "This workspace is not running", "Its container has stopped or was released.",
             "Open it again from the portal", 0),
    "ended": (410, "This session has ended",
              "It was closed, released after being idle, or the workspace was opened again.",
              "Open it again from the portal", 0),
    "expired": (401, "Your link has expired", "For your security, workspace links expire.",
                "Re-open the workspace from the portal", 0),
    "no_token": (401, "Open this workspace from the portal", "This address only works when opened from Hearth.",
                 "Go to the portal", 0),
    "bad_token": (403, "This link is not valid here", "It was not issued for this workspace, or it has been changed.",
                  "Re-open the workspace from the portal", 0),
    "unknown": (404, "No such workspace", "Nothing is served at this address.", "Go to the portal", 0),
}
REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone", 503: "Service Unavailable"}


def _page_html(name: str, cfg: GatewayConfig) -> str:
    _, title, message, link, refresh = PAGES[name]
    return render_to_string(
        "gateway/page.html",
        {"title": title, "message": message, "link": link, "refresh": refresh, "portal_url": cfg.portal_url},
    )


def _http_response(status: int, body: str) -> bytes:
    """A full HTTP/1.0 response for `errorfile` (HAProxy sends it verbatim)."""
    data = body.encode()
    head = (
        f"HTTP/1.0 {status} {REASONS[status]}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def _write(path: Path, data: bytes | str, mode: int = 0o644) -> None:
    data = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def pages_render(cfg: GatewayConfig) -> dict:
    """Write the gateway's pages; returns template names -> paths (`<name>` body, `<name>_http` full response)."""
    cfg.pages_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name in PAGES:
        html = _page_html(name, cfg)
        body_path = cfg.pages_dir / f"{name}.html"
        _write(body_path, html)
        paths[name] = body_path
        http_path = cfg.pages_dir / f"{name}.http"
        # errorfile answers are 503 for the gone page: HAProxy only accepts its own status codes there.
        _write(http_path, _http_response(503 if name == "gone" else PAGES[name][0], html))
        paths[f"{name}_http"] = http_path
    return paths


def route_line(host_key: str, session_id, address: str | None) -> str:
    return f"{host_key} {session_id}@{address or '-'}"


def routes_map_write(cfg: GatewayConfig, routes) -> None:
    """Write the route map file HAProxy loads at start (the runtime API changes it afterwards)."""
    lines = [route_line(h, s, a) + "\n" for h, s, a in routes]
    _write(cfg.routes_map, "".join(lines), 0o600)


def config_render(cfg: GatewayConfig, *, keys: list[SigningKey] | None = None, routes=None) -> Path:
    """Render haproxy.cfg (0600: it holds the JWT secrets), its pages and, if given or missing, the route map."""
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(cfg.run_dir, 0o700)
    pages = pages_render(cfg)
    if routes is not None or not cfg.routes_map.exists():
        routes_map_write(cfg, routes or ())
    text = render_to_string(
        "gateway/haproxy.cfg",
        {
            "admin_socket": cfg.admin_socket,
            "egress_log_format": egress_log.LOG_FORMAT,
            "maxconn": cfg.maxconn,
            "nbthread": cfg.nbthread,
            "hard_stop_after": cfg.hard_stop_after,
            "timeout_connect": cfg.timeout_connect,
            "timeout_tunnel": cfg.timeout_tunnel,
            "pages": {k: str(v) for k, v in pages.items()},
            "cache_total_mb": cfg.cache_total_mb,
            "cache_max_object_bytes": cfg.cache_max_object_bytes,
            "cache_max_age": cfg.cache_max_age,
            "static_compression": cfg.static_compression,
            "token_cache": cfg.token_cache,
            "token_cache_size": cfg.token_cache_size,
            "token_cache_expire": cfg.token_cache_expire,
            "compress_socket": cfg.run_dir / "compress.sock",
            "bind_address": cfg.bind_address,
            "port": cfg.port,
            "gateway_host": cfg.gateway_host,
            "open_path": OPEN_PATH,
            "cookie_name": cookie_name(cfg.scheme),
            "base_cookie_name": COOKIE_NAME,
            "keys": keys if keys is not None else signing_keys(),
            "audience": cfg.audience,
            "issuer": cfg.issuer,
            "routes_map": cfg.routes_map,
            "secure_cookie": cfg.scheme == "https",
            "scheme": cfg.scheme,
            "static_path_regex": STATIC_PATH_REGEX,
            "jwt_shape": JWT_SHAPE_REGEX,
            "table_size": cfg.table_size,
            "table_expire": cfg.table_expire,
            "stats_port": cfg.stats_port,
            "stats_address": cfg.stats_address,
            "tls_cert": cfg.tls_cert,
            "trace_first_request": cfg.trace_first_request,
            "trace_socket": cfg.trace_socket,
        },
    )
    _write(cfg.config_path, text, 0o600)
    return cfg.config_path


def config_check(cfg: GatewayConfig) -> None:
    """`haproxy -c`: raises with HAProxy's own message when the rendered configuration is invalid."""
    result = subprocess.run(
        [settings.HAPROXY_BIN, "-c", "-f", str(cfg.config_path)], capture_output=True, text=True, timeout=30
    )
    if result.returncode != 0:
        raise ValueError(f"haproxy rejected {cfg.config_path}: {result.stdout}{result.stderr}")
