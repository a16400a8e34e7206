"""In real headless Chromium: a staff member's business page in admin (chart, table, CSV link) and a tenant owner's
Audit trail in the portal, each signed in through a session cookie made by Django's test client."""
import pytest
from django.conf import settings
from django.contrib.auth.models import Permission
from django.test import Client

from tenants import services
from tests.e2e.test_signup_browser import artifacts, browser  # noqa: F401
from tests.factories import UserFactory

pytestmark = pytest.mark.browser


def signed_in_page(browser, live_server, user):  # noqa: F811
    client = Client()
    client.force_login(user)
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.add_cookies([{"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME]
                          .value, "url": live_server.url}])
    page = context.new_page()
    page.set_default_timeout(15_000)
    return page


def test_a_business_page_and_the_audit_trail_render_in_chromium(transactional_db, live_server, browser,  # noqa: F811
                                                               artifacts):  # noqa: F811
    owner = UserFactory(email="owner@browser.test")
    tenant = services.tenant_onboard(name="Browser Co", owner=owner, plan="pro", actor=UserFactory(is_staff=True))
    services.tenant_rename(tenant=tenant, name="Browser Company", actor=owner)
    analyst = UserFactory(is_staff=True)
    analyst.user_permissions.add(Permission.objects.get(codename="view_businessmetrics"))

    page = signed_in_page(browser, live_server, analyst)
    page.goto(f"{live_server.url}/admin/")
    page.get_by_role("link", name="Business metrics").first.click()
    page.get_by_role("link", name="MRR and its movement").click()
    chart = page.locator("svg.chart").first
    chart.wait_for()
    assert chart.bounding_box()["width"] > 300  # drawn, not an empty box
    rows = page.locator("#figures tbody tr")
    assert rows.count() == 2  # the default range's two months, the first before any tenant: zeros
    assert rows.last.locator("td").nth(7).inner_text() == "10.00"  # Pro's 10.00 at this month's end (so far)
    assert "format=csv" in page.locator("#csv-link").get_attribute("href")
    page.screenshot(path=artifacts / "business-mrr.png", full_page=True)

    page = signed_in_page(browser, live_server, owner)
    page.goto(f"{live_server.url}/")
    page.get_by_role("link", name="Audit trail").click()
    page.locator("#audit-log").wait_for()
    assert page.locator("#audit-log tbody tr").count() == 2
    page.get_by_label("Action").select_option("tenant.renamed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**action=tenant.renamed**")
    assert page.locator("#audit-log tbody tr").count() == 1
    assert "Browser Company" in page.locator("#audit-log").inner_text()
    page.screenshot(path=artifacts / "portal-audit.png", full_page=True)
