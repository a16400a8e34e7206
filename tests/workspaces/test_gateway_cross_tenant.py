"""One tenant's workspace cannot reach another's through the gateway: Host headers with several values, the shared
static cache, and the browser's cookie sent from a page of another workspace (one site).

Real HAProxy, real HTTP upstreams on loopback (tests/workspaces/gateway_fixtures.py); requests HAProxy must refuse
are sent byte for byte over a raw socket, as a hostile client would.
"""
import socket
import time

import pytest

from tests.workspaces.gateway_fixtures import Upstream, gateway_env, start_gateway, upstream  # noqa: F401
from workspaces.gateway import routes
from workspaces.gateway.tokens import session_token_issue

pytestmark = pytest.mark.slow

# The path of VS Code's 11 MB workbench under code-server: the same for every workspace of an image, hence known.
WORKBENCH = "/stable-0123456789abcdef0123456789abcdef01234567/static/out/vs/workbench/workbench.web.main.js"


def issue(host_key, session_id):
    return session_token_issue(tenant_slug="acme", user_id=7, workspace_host_key=host_key, session_id=session_id,
                               container_id=11)[0]


def raw(port, request: bytes, timeout=3.0) -> bytes:
    """Send `request` as is on a fresh connection and read until HAProxy closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                chunks.append(chunk)
        except TimeoutError:
            pass
    return b"".join(chunks)


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1]) if response.startswith(b"HTTP/") else 0


@pytest.fixture(scope="module", params=[True, False], ids=["token-cache", "every-request"])
def gateway(gateway_env, request):  # noqa: F811
    gw = start_gateway(gateway_env, token_cache=request.param)
    yield gw
    gw.process.stop()


@pytest.fixture(scope="module")
def attacker_container():
    up = Upstream(name="attacker")
    yield up
    up.close()


@pytest.fixture
def two_tenants(gateway, upstream, attacker_container):  # noqa: F811
    """A victim's workspace on `upstream` and an attacker's (another tenant) on their own container. Fresh host
    keys per test: the static cache is shared by the module's tests."""
    suffix = f"{time.monotonic_ns() % 10**9}"
    victim, attacker = f"victim{suffix}", f"attacker{suffix}"
    routes.route_set(host_key=victim, session_id=f"s-v{suffix}", address=upstream.http_address, cfg=gateway.cfg)
    routes.route_set(host_key=attacker, session_id=f"s-a{suffix}", address=attacker_container.http_address,
                     cfg=gateway.cfg)
    return {"victim": (victim, issue(victim, f"s-v{suffix}")), "attacker": (attacker, issue(attacker, f"s-a{suffix}"))}


class TestHostHeaderWithSeveralValues:
    """HAProxy's `req.hdr(host)` (routing, token check) takes the LAST comma-separated value of Host; its cache
    keys an origin-form request on the FIRST value. A Host naming the victim first and the attacker last is
    routed and checked as the attacker's, and its answer cached as the victim's."""

    def test_another_tenants_container_cannot_fill_the_victims_static_cache(self, gateway, upstream,  # noqa: F811
                                                                            attacker_container, two_tenants):
        (victim, victim_token), (attacker, attacker_token) = two_tenants["victim"], two_tenants["attacker"]
        port = gateway.cfg.port
        # The attacker holds a valid token for their own workspace only.
        poison = (f"GET {WORKBENCH} HTTP/1.1\r\n"
                  f"Host: {victim}.localhost:{port}, {attacker}.localhost:{port}\r\n"
                  f"Cookie: hearth_gw={attacker_token}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n")
        raw(port, poison.encode())

        before = upstream.count()[0]
        r = gateway.get(victim, WORKBENCH, token=victim_token, timeout=10)
        assert r.status_code == 200
        # The victim's IDE must get its own container's workbench.js, not script from another tenant's container
        # (which would run in the victim's workspace origin, with its terminal a WebSocket away).
        assert r.headers["x-upstream"] == "container", "served another tenant's bytes from the cache"
        assert upstream.count()[0] == before + 1

    @pytest.mark.parametrize("hosts", ["{v}.localhost:{p}, {a}.localhost:{p}", "{a}.localhost:{p},{v}.localhost:{p}"])
    def test_a_host_header_with_several_values_is_refused(self, gateway, upstream, attacker_container,  # noqa: F811
                                                          two_tenants, hosts):
        (victim, _), (attacker, attacker_token) = two_tenants["victim"], two_tenants["attacker"]
        host = hosts.format(v=victim, a=attacker, p=gateway.cfg.port)
        before = upstream.count(), attacker_container.count()
        response = raw(gateway.cfg.port, (f"GET /x HTTP/1.1\r\nHost: {host}\r\nCookie: hearth_gw={attacker_token}\r\n"
                                          "Connection: close\r\n\r\n").encode())
        assert status_of(response) in (400, 404), response[:200]
        assert (upstream.count(), attacker_container.count()) == before


# --- SameSite=Lax does not separate workspaces ----------------------------------------------------------------
FROM_ANOTHER_WORKSPACE = {  # what a page of another workspace runs to reach the victim's (JavaScript)
    "no-cors fetch": "url => fetch(url, {mode: 'no-cors', credentials: 'include'}).then(() => 'sent', () => 'failed')",
    "iframe": """url => new Promise(done => { const f = document.createElement('iframe');
                 f.onload = () => done('loaded'); f.src = url; document.documentElement.appendChild(f); })""",
    "image": """url => new Promise(done => { const i = new Image(); i.onload = i.onerror = () => done('sent');
                i.src = url; })""",
}


@pytest.mark.browser
@pytest.mark.parametrize("how", list(FROM_ANOTHER_WORKSPACE))
def test_a_page_of_another_workspace_cannot_send_the_victims_cookie(gateway_env, upstream, attacker_container, how,  # noqa: F811
                                                                     tmp_path):
    """Production shape: HTTPS (the __Host- cookie: Secure, HttpOnly, SameSite=Lax, host-only), workspaces under
    one domain. Every <key>.hearth.test is the SAME SITE, so SameSite=Lax lets a page served by another tenant's
    workspace (its code is that tenant's) make the browser send the victim's cookie: the gateway checks it and
    forwards the request into the victim's container (code-server's /proxy/<port>/ reaches the victim's own dev
    servers; a frame lays the victim's IDE under the attacker's page)."""
    import shutil

    from tests.conftest import require_service
    from tests.workspaces.gateway_fixtures import free_port
    from tests.workspaces.test_gateway_process import _self_signed_pem
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess

    def chromium_present():
        if not shutil.which("chromium"):
            raise FileNotFoundError("chromium")

    require_service("Chromium", chromium_present)
    from playwright.sync_api import sync_playwright

    pem = tmp_path / "gw.pem"
    _self_signed_pem(pem)
    run_dir = gateway_env.with_name(gateway_env.name + "-site")
    cfg = gateway_config(run_dir=run_dir, port=free_port(), gateway_host="hearth.test", scheme="https",
                         tls_cert=str(pem), bind_address="127.0.0.1", cache_total_mb=16,
                         cache_max_object_bytes=1024 * 1024)
    process = GatewayProcess(cfg)
    process.start()
    try:
        routes.route_set(host_key="victim", session_id="s-v", address=upstream.http_address, cfg=cfg)
        routes.route_set(host_key="attacker", session_id="s-a", address=attacker_container.http_address, cfg=cfg)
        victim_url, attacker_url = f"https://victim.hearth.test:{cfg.port}", f"https://attacker.hearth.test:{cfg.port}"
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True, args=[
                "--no-sandbox", "--disable-gpu", "--host-resolver-rules=MAP *.hearth.test 127.0.0.1"])
            try:
                context = browser.new_context(ignore_https_errors=True)
                page = context.new_page()
                # The victim opened their workspace in this browser, then follows a link to the attacker's.
                assert page.goto(f"{victim_url}/__hearth/open?token={issue('victim', 's-v')}").status == 200
                assert page.goto(f"{attacker_url}/__hearth/open?token={issue('attacker', 's-a')}").status == 200
                before = upstream.count()[0]
                page.evaluate(FROM_ANOTHER_WORKSPACE[how], f"{victim_url}/proxy/3000/api/delete-everything")
                page.wait_for_timeout(300)
                reached = upstream.requests[before:]
                assert not reached, f"another workspace's page reached the victim's container: {reached[0][:1]}"
                # A link from there to the victim's workspace still opens it (a top-level GET navigation).
                with page.expect_navigation():
                    page.evaluate("url => { location.href = url; }", f"{victim_url}/after-a-link")
                assert page.url == f"{victim_url}/after-a-link" and "hello from the container" in page.content()
            finally:
                browser.close()
    finally:
        process.stop()
        shutil.rmtree(run_dir, ignore_errors=True)
