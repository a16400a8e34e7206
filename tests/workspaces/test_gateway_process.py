"""Running the gateway: restart with routes restored, hitless reload, key rotation, `manage.py gateway`."""
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from django.conf import settings
from prometheus_client.parser import text_string_to_metric_families

from tests.workspaces.gateway_fixtures import (  # noqa: F401
    GATEWAY_HOST,
    PORTAL_URL,
    free_port,
    gateway_env,
    start_gateway,
    upstream,
    wait_until,
)
from workspaces.gateway import routes, tokens
from workspaces.gateway.process import gateway_keys_rotate, gateway_reload
from workspaces.gateway.runtime_api import RuntimeAPI

pytestmark = pytest.mark.slow


def issue(host_key, session_id):
    return tokens.session_token_issue(tenant_slug="acme", user_id=1, workspace_host_key=host_key,
                                      session_id=session_id, container_id=1)[0]


@pytest.fixture
def live_routes(upstream):  # noqa: F811
    # Stands in for the database query the pool provides (GATEWAY_ROUTES_SOURCE): the routes of live sessions.
    return [("ws-r1", "s-r1", upstream.http_address), ("ws-r2", "s-r2", upstream.ws_address)]


@pytest.fixture
def gateway(gateway_env, live_routes):  # noqa: F811
    gw = start_gateway(gateway_env, routes_source=lambda: list(live_routes))
    yield gw
    gw.process.stop()


def test_routes_are_in_place_before_the_first_request(gateway, upstream):  # noqa: F811
    assert gateway.get("ws-r1", "/", token=issue("ws-r1", "s-r1")).status_code == 200


def test_haproxy_restarted_restores_routes_and_works_within_seconds(gateway, live_routes, upstream):  # noqa: F811
    token = issue("ws-r1", "s-r1")
    assert gateway.get("ws-r1", "/", token=token).status_code == 200
    live_routes.append(("ws-r3", "s-r3", upstream.http_address))  # opened while the gateway was down
    gateway.process.kill()
    started = time.monotonic()
    gateway.process.start()
    assert gateway.get("ws-r1", "/", token=token).status_code == 200
    assert gateway.get("ws-r3", "/", token=issue("ws-r3", "s-r3")).status_code == 200
    assert time.monotonic() - started < 5


def test_routes_restore_replaces_the_whole_map(gateway, upstream):  # noqa: F811
    routes.routes_restore([("ws-x", "s-x", upstream.http_address)], cfg=gateway.cfg)
    assert [r.host_key for r in routes.routes_list(cfg=gateway.cfg)] == ["ws-x"]
    assert gateway.get("ws-r1", "/", token=issue("ws-r1", "s-r1")).status_code == 410
    assert gateway.get("ws-x", "/", token=issue("ws-x", "s-x")).status_code == 200


def test_key_rotation_with_hitless_reload_keeps_live_sessions(gateway, upstream):  # noqa: F811
    old_token = issue("ws-r2", "s-r2")
    old_http_token = issue("ws-r1", "s-r1")
    old_kid = tokens.signing_keys()[0].kid
    admin = RuntimeAPI(gateway.cfg.admin_socket)
    old_pid = int(admin.command("show info").split("Pid: ")[1].split()[0])

    async def run():
        async with gateway.websocket("ws-r2", old_token) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            # Mid-reload, requests keep being served (nothing refused, nothing dropped).
            failures = []

            def hammer(stop):
                while not stop:
                    r = gateway.get("ws-r1", "/", token=issue("ws-r1", "s-r1"))
                    if r.status_code != 200:
                        failures.append(r.status_code)

            stop = []
            load = asyncio.to_thread(hammer, stop)
            load_task = asyncio.ensure_future(load)
            new_kid = await asyncio.to_thread(gateway_keys_rotate, gateway.cfg, routes_source=None)
            stop.append(True)
            await load_task
            # The WebSocket opened before the rotation lives on in the old worker.
            await ws.send("after")
            assert await ws.recv() == "after"
            return new_kid, failures

    new_kid, failures = asyncio.run(run())
    assert failures == []
    assert new_kid != old_kid
    assert [k.kid for k in tokens.signing_keys()] == [new_kid, old_kid]
    new_pid = int(admin.command("show info").split("Pid: ")[1].split()[0])
    assert new_pid != old_pid
    # Old tokens still accepted, new ones signed with the new key.
    assert gateway.get("ws-r1", "/", token=issue("ws-r1", "s-r1")).status_code == 200
    assert gateway.get("ws-r1", "/", token=old_http_token).status_code == 200
    config = gateway.cfg.config_path.read_text()
    assert new_kid in config and old_kid in config
    assert oct(gateway.cfg.config_path.stat().st_mode)[-3:] == "600"


def test_reload_keeps_routes_added_at_run_time_and_the_counters(gateway, upstream):  # noqa: F811
    routes.route_set(host_key="ws-live", session_id="s-live", address=upstream.http_address, cfg=gateway.cfg)
    token = issue("ws-live", "s-live")
    for _ in range(3):
        assert gateway.get("ws-live", "/", token=token).status_code == 200
    assert routes.counters_read(cfg=gateway.cfg)["s-live"]["requests"] == 3
    gateway_reload(gateway.cfg)
    assert gateway.get("ws-live", "/", token=token).status_code == 200
    # Hearth carried the counters over to the new worker, so the count goes on from 3.
    counted = wait_until(lambda: routes.counters_read(cfg=gateway.cfg).get("s-live", {}).get("requests") == 4)
    assert counted, routes.counters_read(cfg=gateway.cfg)


def test_route_delete_cuts_websockets_held_by_a_draining_worker(gateway, upstream):  # noqa: F811
    token = issue("ws-r2", "s-r2")

    async def run():
        async with gateway.websocket("ws-r2", token) as ws:
            await asyncio.to_thread(gateway_reload, gateway.cfg)
            await ws.send("still")
            assert await ws.recv() == "still"
            cut = await asyncio.to_thread(routes.route_delete, host_key="ws-r2", cfg=gateway.cfg)
            assert cut == 1
            with pytest.raises(Exception):  # noqa: B017 - websockets raises ConnectionClosed* here
                await asyncio.wait_for(ws.recv(), 3)

    asyncio.run(run())


def test_manage_py_gateway_runs_reloads_on_sighup_and_stops(db, gateway_env, tmp_path):  # noqa: F811
    run_dir = Path(f"{gateway_env}-cmd")
    port = free_port()
    db = settings.DATABASES["default"]  # the test database: the gateway restores live routes from it at start
    env = dict(os.environ, GATEWAY_RUN_DIR=str(run_dir), HEARTH_GATEWAY_PORT=str(port), GATEWAY_JWT_KEYS="",
               DJANGO_SETTINGS_MODULE="config.settings.test",
               DATABASE_URL=f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}")
    proc = subprocess.Popen([sys.executable, "manage.py", "gateway"], cwd=settings.BASE_DIR, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        admin = RuntimeAPI(run_dir / "admin.sock")
        assert wait_until(admin.ping, timeout=20), "the gateway did not start"
        pid = admin.command("show info").split("Pid: ")[1].split()[0]
        proc.send_signal(signal.SIGHUP)
        assert wait_until(lambda: admin.ping() and admin.command("show info").split("Pid: ")[1].split()[0] != pid,
                          timeout=20), "no reload after SIGHUP"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        assert not admin.ping()
    finally:
        if proc.poll() is None:
            proc.kill()
        output = proc.communicate()[0]
    assert "gateway reloaded" in output, output

    # Hearth's process killed outright: HAProxy does not outlive it (no orphan holding the port).
    proc = subprocess.Popen([sys.executable, "manage.py", "gateway"], cwd=settings.BASE_DIR, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(admin.ping, timeout=20), "the gateway did not start"
        proc.kill()
        proc.wait()
        assert wait_until(lambda: not admin.ping(), timeout=10), "HAProxy outlived manage.py gateway"
    finally:
        if proc.poll() is None:
            proc.kill()
    shutil.rmtree(run_dir, ignore_errors=True)


def test_prometheus_exporter_on_the_stats_port(gateway_env):  # noqa: F811
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess

    cfg = gateway_config(run_dir=Path(f"{gateway_env}-stats"), port=free_port(), stats_port=free_port(),
                         bind_address="127.0.0.1", cache_total_mb=16, cache_max_object_bytes=1024 * 1024)
    process = GatewayProcess(cfg)
    process.start()

    def scraped():
        r = httpx.get(f"http://127.0.0.1:{cfg.stats_port}/metrics")
        assert r.status_code == 200
        # Prometheus text that prometheus_client's parser reads, as a Prometheus would.
        families = {f.name: f for f in text_string_to_metric_families(r.text)}
        return {(s.name, s.labels.get("proxy"), s.labels.get("code")): s.value
                for name in ("haproxy_frontend_http_requests", "haproxy_frontend_http_responses")
                for s in families[name].samples}

    try:
        before = scraped()
        assert ("haproxy_frontend_http_requests_total", "hearth_gateway", None) in before
        # A request without a session token: refused (401) by the data plane, and counted by the exporter.
        r = httpx.get(f"http://127.0.0.1:{cfg.port}/", headers={"Host": f"nothing.{GATEWAY_HOST}"})
        assert r.status_code == 401
        after = scraped()
        key = ("haproxy_frontend_http_requests_total", "hearth_gateway", None)
        assert after[key] == before[key] + 1
        key = ("haproxy_frontend_http_responses_total", "hearth_gateway", "4xx")
        assert after[key] == before[key] + 1
        assert httpx.get(f"http://127.0.0.1:{cfg.stats_port}/stats").status_code == 200
    finally:
        process.stop()
        shutil.rmtree(cfg.run_dir, ignore_errors=True)


def _self_signed_pem(path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "*.localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("*.localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM) + key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))


def test_https_gateway_sets_a_host_prefixed_secure_cookie(gateway_env, upstream):  # noqa: F811
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess

    run_dir = Path(f"{gateway_env}-tls")
    run_dir.mkdir()
    pem = run_dir / "gateway.pem"
    _self_signed_pem(pem)
    cfg = gateway_config(run_dir=run_dir, port=free_port(), scheme="https", tls_cert=str(pem), bind_address="127.0.0.1",
                         cache_total_mb=16, cache_max_object_bytes=1024 * 1024)
    process = GatewayProcess(cfg)
    process.start()
    try:
        routes.route_set(host_key="tls-1", session_id="s-tls", address=upstream.http_address, cfg=cfg)
        token = issue("tls-1", "s-tls")
        base, host = f"https://127.0.0.1:{cfg.port}", f"tls-1.localhost:{cfg.port}"
        opened = httpx.get(f"{base}/__hearth/open?token={token}", headers={"Host": host}, verify=False)
        assert opened.status_code == 303
        assert opened.headers["set-cookie"] == (
            f"__Host-hearth_gw={token}; Path=/; HttpOnly; SameSite=Lax; Secure")
        page = httpx.get(f"{base}/", headers={"Host": host, "Cookie": f"__Host-hearth_gw={token}"}, verify=False)
        assert page.status_code == 200
        assert page.text == "hello from the container /"
        # The plain name is not accepted under HTTPS.
        plain = httpx.get(f"{base}/", headers={"Host": host, "Cookie": f"hearth_gw={token}"}, verify=False)
        assert plain.status_code == 401
    finally:
        process.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
