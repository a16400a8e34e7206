"""code-server end to end in headless Chromium: portal login → Open → workbench through the real gateway → a file
made in the terminal lands in the user's storage → close → open again → the file is there in the new session.

Real PostgreSQL, the real Docker pool with the `code-server` template's image, a real HAProxy gateway (the
gateway tests' fixtures), Django's live server for the portal, Debian's Chromium. Nothing is mocked.
"""
import time
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import require_service
from tests.e2e.test_signup_browser import browser  # noqa: F401  (Debian's Chromium, fails under CI if missing)
from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_pool import restore_defaults
from tests.workspaces.gateway_fixtures import gateway, gateway_env  # noqa: F401

pytestmark = [pytest.mark.browser, pytest.mark.docker, pytest.mark.slow]

CODE_SERVER_IMAGE = "hearth/code-server:4.100.3"
PASSWORD = "a long passphrase 42"
FILE_NAME = "hearth-e2e.txt"


@pytest.fixture
def artifacts():
    path = Path(settings.TEST_ARTIFACTS) / "e2e"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def code_server_template(engine, pool_env):  # noqa: F811
    from workspaces.models import WorkspaceTemplate

    require_service(f"The {CODE_SERVER_IMAGE} image (`make images` builds it; `make test` does)",
                    lambda: engine.image_exists(CODE_SERVER_IMAGE) or (_ for _ in ()).throw(
                        LookupError(CODE_SERVER_IMAGE)))
    restore_defaults()
    WorkspaceTemplate.objects.exclude(slug="code-server").update(enabled=False)
    template = WorkspaceTemplate.objects.get(slug="code-server")
    template.image, template.warm_min, template.warm_max = CODE_SERVER_IMAGE, 1, 1
    template.enabled, template.pool_paused = True, False
    template.save()
    return template


@pytest.fixture
def portal_member(transactional_db):
    from allauth.account.models import EmailAddress

    from tenants.models import Plan
    from tests.factories import MembershipFactory, TenantFactory, UserFactory

    restore_defaults()
    tenant = TenantFactory(name="Lovelace Labs", plan=Plan.objects.get(slug="enterprise"))
    user = UserFactory(email="ada@lovelace.test", password=PASSWORD)
    EmailAddress.objects.create(user=user, email=user.email, verified=True, primary=True)
    return MembershipFactory(tenant=tenant, user=user, role="member")


def _wait_for_workbench(page, sockets, artifacts, name):
    try:
        page.wait_for_selector(".monaco-workbench", state="visible", timeout=90_000)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(not ws.is_closed() for ws in sockets):
            page.wait_for_timeout(50)
    except Exception:
        page.screenshot(path=str(artifacts / f"{name}-failed.png"))
        (artifacts / f"{name}-failed.html").write_text(page.content())
        raise
    assert any(not ws.is_closed() for ws in sockets), "the IDE's WebSocket did not connect through the gateway"


def _open_from_portal(context, portal, artifacts, name):
    """Click Open (a form with target=_blank) and follow the new tab to a connected workbench."""
    with context.expect_page(timeout=60_000) as new_tab:
        portal.get_by_role("button", name="Open").click()
    page = new_tab.value
    sockets = []
    page.on("websocket", lambda ws: sockets.append(ws))
    _wait_for_workbench(page, sockets, artifacts, name)
    return page, sockets


def test_code_server_opens_from_the_portal_and_keeps_files_across_sessions(
        live_server, gateway, node, code_server_template, portal_member, browser, artifacts, settings):  # noqa: F811
    from workspaces import pool
    from workspaces.models import Session, Workspace

    settings.HEARTH_GATEWAY_PORT = gateway.cfg.port  # the opening URL points at this test's HAProxy
    settings.HEARTH_BASE_URL = live_server.url
    pool.pool_fill()
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    context.set_default_timeout(30_000)
    portal = context.new_page()

    portal.goto(f"{live_server.url}/accounts/login/")
    portal.get_by_label("Email").fill(portal_member.user.email)
    portal.get_by_role("button", name="Continue").click()  # no single sign-on for this domain: the password form
    portal.get_by_label("Password").fill(PASSWORD)
    portal.get_by_role("button", name="Sign in").click()
    portal.get_by_role("heading", name="Lovelace Labs", level=1).wait_for()

    portal.goto(f"{live_server.url}/workspaces/")
    portal.get_by_label("Name").fill("thesis")
    portal.get_by_label("Template").select_option("code-server")
    portal.get_by_role("button", name="Create").click()
    portal.get_by_text("Workspace 'thesis' created.").wait_for()
    workspace = Workspace.objects.get(tenant=portal_member.tenant, name="thesis")
    portal.screenshot(path=str(artifacts / "cs-01-workspaces.png"), full_page=True)

    # First session: the IDE loads on the workspace's own host through the gateway.
    ide, sockets = _open_from_portal(context, portal, artifacts, "cs-02-first-open")
    assert ide.url.startswith(f"http://{workspace.host_key}.localhost:{gateway.cfg.port}/")
    assert "token=" not in ide.url
    assert any(c["name"] == "hearth_gw" and c["domain"] == f"{workspace.host_key}.localhost" and c["httpOnly"]
               for c in context.cookies())
    first = Session.objects.get(workspace=workspace, ended_at__isnull=True)
    ide.screenshot(path=str(artifacts / "cs-02-workbench.png"))

    # A file made in the IDE's terminal lands in the user's storage on the host.
    made = Path(workspace.storage_path) / FILE_NAME
    ide.keyboard.press("Control+Backquote")
    ide.wait_for_selector(".xterm-helper-textarea", timeout=60_000)
    for _ in range(6):  # keys typed before the shell is attached may be lost: retype until it ran
        ide.focus(".xterm-helper-textarea")
        ide.keyboard.type(f"echo written in session one > ~/{FILE_NAME}\n")
        deadline = time.monotonic() + 5
        while not made.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        if made.exists():
            break
    ide.screenshot(path=str(artifacts / "cs-03-terminal.png"))
    assert made.read_text() == "written in session one\n"

    # Close from the portal: the session ends, the gateway cuts the IDE's WebSocket.
    portal.bring_to_front()
    portal.reload()
    portal.get_by_role("button", name="Close").click()
    portal.get_by_text("Session closed.").wait_for()
    first.refresh_from_db()
    assert first.ended_at is not None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(not ws.is_closed() for ws in sockets):
        ide.wait_for_timeout(100)
    assert all(ws.is_closed() for ws in sockets), "the closed session's WebSocket is still open"
    ended = ide.reload()  # the old tab gets a clear page with a way back, not a hang
    assert ended.status == 410 and ide.get_by_role("link", name="Open it again from the portal").is_visible()
    ide.screenshot(path=str(artifacts / "cs-04-closed-tab.png"))
    ide.close()

    # Second session (the worker would refill the pool after the claim; here the test does): the file is back.
    pool.pool_fill()
    portal.reload()
    ide, sockets = _open_from_portal(context, portal, artifacts, "cs-04-second-open")
    second = Session.objects.get(workspace=workspace, ended_at__isnull=True)
    assert second.pk != first.pk and second.container_id != first.container_id  # a new container
    assert ide.url.startswith(f"http://{workspace.host_key}.localhost:{gateway.cfg.port}/")  # same host: warm cache
    row = ide.locator(".explorer-folders-view .monaco-list-row", has_text=FILE_NAME)
    row.wait_for(timeout=60_000)
    row.click()
    ide.locator(".editor-instance .view-lines", has_text="written in session one").wait_for(timeout=30_000)
    ide.screenshot(path=str(artifacts / "cs-05-file-again.png"))
    assert made.read_text() == "written in session one\n"
    context.close()
    assert (artifacts / "cs-05-file-again.png").stat().st_size > 10_000
