"""code-server through the gateway in headless Chromium: opening URL -> cookie -> workbench -> WebSocket."""
import shutil
import tempfile
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import require_service
from tests.workspaces.gateway_fixtures import PORTAL_URL, gateway, gateway_env  # noqa: F401
from workspaces.gateway import routes
from workspaces.gateway.tokens import session_token_issue
from workspaces.gateway.urls import workspace_url

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.slow]
IMAGE = "hearth/code-server:4.100.3"


@pytest.fixture(scope="module")
def code_server(docker_client):
    """A code-server container of the runtime's image on a network of our own, home bound at creation."""

    require_service(f"The {IMAGE} image (`make images` builds it; `make test` does)",
                    lambda: docker_client.images.get(IMAGE))
    labels = {"hearth.instance": settings.HEARTH_INSTANCE, "hearth.test": "gateway-browser"}
    home = Path(tempfile.mkdtemp(prefix="hgwcs", dir="/tmp"))
    shutil.chown(home, 1000, 1000)
    network = docker_client.networks.create(f"{settings.HEARTH_INSTANCE}-gwtest", labels=labels)
    container = docker_client.containers.run(
        IMAGE, detach=True, init=True, labels=labels, network=network.name, environment={"HEARTH_LATE_BIND": "none"},
        volumes={str(home): {"bind": "/home/coder", "mode": "rw"}}, name=f"{settings.HEARTH_INSTANCE}-gwtest-cs",
    )
    try:
        container.reload()
        ip = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        address = f"{ip}:8080"
        import httpx

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{address}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        yield address
    finally:
        container.remove(force=True)
        network.remove()
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def browser():
    def chromium_present():
        if not shutil.which("chromium"):
            raise FileNotFoundError("chromium")

    require_service("Chromium", chromium_present)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                              args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                                    "--disable-background-networking", "--disable-component-update",
                                    "--ignore-certificate-errors"])
        yield b
        b.close()


class WorkbenchNotShown(AssertionError):
    pass


def open_workbench(browser, url):
    context = browser.new_context()
    page = context.new_page()
    sockets, failed = [], []
    page.on("websocket", lambda ws: sockets.append(ws))
    page.on("requestfailed", lambda request: failed.append(f"{request.url[:120]}: {request.failure}"))
    started = time.monotonic()
    page.goto(url)
    try:
        page.wait_for_selector(".monaco-workbench", state="visible", timeout=60_000)
    except Exception as exc:
        artifacts = Path(settings.TEST_ARTIFACTS)
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "gateway-code-server-failed.png"))
        (artifacts / "gateway-code-server-failed.html").write_text(page.content())
        context.close()
        raise WorkbenchNotShown(f"{exc}; failed requests: {failed or 'none'}") from exc
    # The IDE's remote connection: a WebSocket through the gateway that stays open.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(not ws.is_closed() for ws in sockets):
        page.wait_for_timeout(50)
    elapsed = time.monotonic() - started
    return context, page, sockets, elapsed


def test_code_server_opens_through_the_gateway(gateway, code_server, browser):  # noqa: F811
    routes.route_set(host_key="cs-1", session_id="s-cs1", address=code_server, cfg=gateway.cfg)
    token, _ = session_token_issue(tenant_slug="acme", user_id=1, workspace_host_key="cs-1", session_id="s-cs1",
                                   container_id=1)
    url = workspace_url(host_key="cs-1", token=token).replace(
        f":{settings.HEARTH_GATEWAY_PORT}/", f":{gateway.cfg.port}/")
    context, page, sockets, cold = open_workbench(browser, url)
    try:
        assert "token=" not in page.url  # redirected to the clean URL
        cookies = context.cookies()
        assert [(c["name"], c["domain"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
            ("hearth_gw", "cs-1.localhost", True, "Lax")]
        assert any(not ws.is_closed() for ws in sockets), "no open WebSocket"
        artifacts = Path(settings.TEST_ARTIFACTS)
        artifacts.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(artifacts / "gateway-code-server.png"))
        # Reopen in the same browser context (warm cache, same host), then the gateway refuses once released.
        page.goto(url)
        page.wait_for_selector(".monaco-workbench", state="visible", timeout=60_000)
        counters = routes.counters_read(cfg=gateway.cfg)["s-cs1"]
        assert counters["requests"] > 10 and counters["active"] >= 1
        routes.route_delete(host_key="cs-1", cfg=gateway.cfg)
        # The tab of the closed session, reloaded: "session ended" and the way back, not a hang or "not running".
        response = page.reload()
        assert response.status == 410
        assert page.get_by_role("heading", name="This session has ended").is_visible()
        assert page.get_by_role("link", name="Open it again from the portal").get_attribute("href") == PORTAL_URL
    finally:
        context.close()
    print(f"\ncode-server workbench through the gateway, cold browser cache: {cold:.2f} s")


def test_code_server_over_https_and_http2(gateway_env, code_server, browser, tmp_path):  # noqa: F811
    """TLS on HAProxy (ALPN h2): the __Host- cookie, the workbench and its WebSocket (over HTTP/2 or 1.1)."""
    from tests.workspaces.gateway_fixtures import start_gateway
    from tests.workspaces.test_gateway_process import _self_signed_pem

    pem = Path(f"{gateway_env}-browser.pem")
    _self_signed_pem(pem)
    gw = start_gateway(Path(f"{gateway_env}-tlsb"), scheme="https", tls_cert=str(pem))
    try:
        routes.route_set(host_key="cs-2", session_id="s-cs2", address=code_server, cfg=gw.cfg)
        token, _ = session_token_issue(tenant_slug="acme", user_id=1, workspace_host_key="cs-2",
                                       session_id="s-cs2", container_id=1)
        url = f"https://cs-2.localhost:{gw.cfg.port}/__hearth/open?token={token}"
        try:
            context, page, sockets, elapsed = open_workbench(browser, url)
        except WorkbenchNotShown as first:
            # Seen 4 times in about 12 runs, all while other engineers' suites were starting and removing
            # containers on this machine: a blank workbench, once ERR_NETWORK_CHANGED (Chromium drops requests
            # when network interfaces come and go). Cause not pinned down; the failed requests are printed. A
            # user reloads; so does the test, once, and says so. Twice in a row fails.
            print(f"\nhttps: first open did not show the workbench ({first}); opening once more")
            context, page, sockets, elapsed = open_workbench(browser, url)
        try:
            assert [(c["name"], c["secure"], c["httpOnly"]) for c in context.cookies()] == [
                ("__Host-hearth_gw", True, True)]
            assert any(not ws.is_closed() for ws in sockets), "no open WebSocket"
            protocol = page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
            print(f"\nhttps: workbench in {elapsed:.2f} s over {protocol}")
        finally:
            context.close()
    finally:
        gw.process.stop()
        shutil.rmtree(gw.cfg.run_dir, ignore_errors=True)
        pem.unlink(missing_ok=True)
