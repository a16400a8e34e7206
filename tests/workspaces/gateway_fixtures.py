"""Real HAProxy and real upstreams for the gateway tests: an HTTP server and a WebSocket echo server on loopback."""
import asyncio
import shutil
import socket
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import websockets
from django.test import override_settings

from tests.conftest import require_service

GATEWAY_HOST = "localhost"
PORTAL_URL = "http://portal.test:8000"
STATIC_BODY = b"/* workbench */" + b"x" * (11 * 1024 * 1024)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Upstream:
    """A workspace container stand-in: counts every HTTP request and WebSocket it receives."""

    def __init__(self, name="container"):
        self.name = name
        self.requests = []  # (path, headers)
        self.ws_connections = 0
        self.lock = threading.Lock()
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with upstream.lock:
                    upstream.requests.append((self.path, {k.lower(): v for k, v in self.headers.items()}))
                set_cookie = None
                if self.path.startswith("/set-cookie/"):
                    from urllib.parse import unquote

                    set_cookie = unquote(self.path[len("/set-cookie/"):])
                if "/static/" in self.path:
                    body, extra = STATIC_BODY, {"Cache-Control": "public, max-age=31536000",
                                                "Content-Type": "text/javascript"}
                else:
                    body, extra = b"hello from the container " + self.path.encode(), {"Content-Type": "text/plain"}
                self.send_response(200)
                self.send_header("X-Upstream", upstream.name)
                if set_cookie:
                    self.send_header("Set-Cookie", set_cookie)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            def handle_error(self, request, client_address):
                pass  # HAProxy resets idle keep-alive connections when it reloads; that is not an error here

        self.http = Server(("127.0.0.1", 0), Handler)
        self.http.daemon_threads = True
        self.http_address = f"127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

        self.ws_port = free_port()
        self.ws_address = f"127.0.0.1:{self.ws_port}"
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def echo(ws):
            with upstream.lock:
                upstream.ws_connections += 1
            pusher = None
            if ws.request.path == "/push":  # a container that talks by itself (keep-alives, terminal output)
                async def push():
                    while True:
                        await ws.send("tick")
                        await asyncio.sleep(0.2)

                pusher = asyncio.ensure_future(push())
            try:
                async for message in ws:
                    await ws.send(message)
            except websockets.ConnectionClosed:
                pass
            finally:
                if pusher is not None:
                    pusher.cancel()

        async def serve():
            self.ws_server = await websockets.serve(echo, "127.0.0.1", self.ws_port, compression=None)
            ready.set()
            await self.ws_server.wait_closed()

        threading.Thread(target=lambda: self.loop.run_until_complete(serve()), daemon=True).start()
        ready.wait(5)

    def count(self) -> tuple[int, int]:
        with self.lock:
            return len(self.requests), self.ws_connections

    def close(self):
        self.http.shutdown()
        self.http.server_close()
        self.loop.call_soon_threadsafe(self.ws_server.close)


class Gateway:
    """A running HAProxy from Hearth's own config, with helpers to talk to it as a browser would."""

    def __init__(self, process, cfg):
        self.process, self.cfg = process, cfg
        self.base = f"http://127.0.0.1:{cfg.port}"

    def host(self, host_key: str) -> str:
        return f"{host_key}.{GATEWAY_HOST}:{self.cfg.port}"

    def get(self, host_key, path="/", *, token=None, cookie=None, timeout=5.0):
        headers = {"Host": self.host(host_key)}
        if token is not None:
            cookie = f"hearth_gw={token}" + (f"; {cookie}" if cookie else "")
        if cookie:
            headers["Cookie"] = cookie
        return httpx.get(self.base + path, headers=headers, timeout=timeout, follow_redirects=False)

    def websocket(self, host_key, token, path="/ws", **kwargs):
        return websockets.connect(
            f"ws://{self.host(host_key)}{path}", host="127.0.0.1", port=self.cfg.port, compression=None,
            additional_headers={"Cookie": f"hearth_gw={token}"} if token else {}, open_timeout=5, **kwargs
        )


def start_gateway(run_dir: Path, *, routes_source=None, **overrides):
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess

    # A new gateway, not a restart: the counters kept by an earlier test's gateway in this run dir are not its own.
    shutil.rmtree(Path(run_dir) / "counters", ignore_errors=True)
    cfg = gateway_config(run_dir=run_dir, port=free_port(), gateway_host=GATEWAY_HOST,
                         portal_url=PORTAL_URL, bind_address="127.0.0.1", cache_total_mb=64,
                         cache_max_object_bytes=16 * 1024 * 1024, maxconn=2000, **overrides)
    process = GatewayProcess(cfg, routes_source=routes_source)
    process.start()
    return Gateway(process, cfg)


def _haproxy_present():
    from django.conf import settings

    if not shutil.which(settings.HAPROXY_BIN):
        raise FileNotFoundError(settings.HAPROXY_BIN)


@pytest.fixture(scope="module")
def gateway_env():
    """A short run dir (unix socket paths are limited to 108 bytes) and a per-install key file in it."""
    require_service("HAProxy", _haproxy_present)
    run_dir = Path(tempfile.mkdtemp(prefix="hgw", dir="/tmp"))
    with override_settings(GATEWAY_RUN_DIR=run_dir, GATEWAY_JWT_KEYS="", GATEWAY_HOST=GATEWAY_HOST,
                           GATEWAY_AUDIENCE="hearth-gateway", GATEWAY_ISSUER="hearth", HEARTH_BASE_URL=PORTAL_URL):
        yield run_dir
    shutil.rmtree(run_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def upstream():
    up = Upstream()
    yield up
    up.close()


@pytest.fixture(scope="module")
def gateway(gateway_env):
    gw = start_gateway(gateway_env)
    yield gw
    gw.process.stop()


def wait_until(predicate, timeout=5.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    return predicate()
