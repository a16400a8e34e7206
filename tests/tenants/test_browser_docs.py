"""The API docs page and the admin overview in real headless Chromium (offline: no CDN may be needed)."""
import os

import pytest
from django.conf import settings

from tenants import services
from tests.conftest import require_service
from tests.factories import TenantFactory, UserFactory

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True, serialized_rollback=True)]

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.fixture
def browser(monkeypatch):
    # Playwright's sync API runs an event loop in this thread; the test's own ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    from playwright.sync_api import sync_playwright

    require_service("Chromium", lambda: os.stat("/usr/bin/chromium"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _artifact(name):
    path = settings.TEST_ARTIFACTS / name
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_api_docs_render_offline(live_server, browser):
    page = browser.new_page()
    outside = []  # anything not served by Hearth itself, stopped before it reaches the network
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith(live_server.url)
               else (outside.append(route.request.url), route.abort()))
    page.goto(f"{live_server.url}/api/docs/")
    page.get_by_text("Hearth API").first.wait_for(timeout=30_000)
    page.get_by_text("/api/v1/members/{id}").first.wait_for(timeout=30_000)
    assert page.get_by_text("bearerAuth").count() >= 1
    page.screenshot(path=_artifact("api-docs.png"), full_page=False)
    assert [u for u in outside if not u.startswith(("data:", "blob:"))] == []


def test_admin_overview_in_a_browser(live_server, browser):
    staff = UserFactory(email="staff@hearth.test", is_staff=True, is_superuser=True)
    services.tenant_onboard(name="Acme", owner=UserFactory(), plan="pro")
    TenantFactory(synthetic=True)
    page = browser.new_page()
    page.goto(f"{live_server.url}/admin/login/?next=/admin/")
    page.fill("#id_username", staff.email)
    page.fill("#id_password", "correct horse battery")
    page.click("input[type=submit]")
    page.get_by_role("link", name="Tenants overview").click()
    page.locator("#by-plan").wait_for()
    assert "Pro" in page.locator("#by-plan").inner_text()
    assert page.locator("#signups tbody tr").count() == 30
    page.screenshot(path=_artifact("admin-overview.png"), full_page=True)
