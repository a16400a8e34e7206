"""End to end in real headless Chromium: sign up for Team → confirm by mail → pay on the (offline) Stripe Checkout →
Billing and dashboard on Team → invite a member → they join."""
import re
from pathlib import Path

import pytest
from django.conf import settings

from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.conftest import require_service

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
PHONE = {"width": 390, "height": 844}


@pytest.fixture
def browser(monkeypatch):
    """Debian's Chromium through Playwright (never a downloaded browser); fails under CI=true if missing."""
    from playwright.sync_api import sync_playwright

    # Playwright's sync API runs an event loop in this thread; the test body's ORM calls are still synchronous.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        launched = []

        def launch():
            if not Path(CHROMIUM).exists():
                raise FileNotFoundError(CHROMIUM)
            launched.append(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True))

        require_service("Chromium", launch)
        yield launched[0]
        launched[0].close()


@pytest.fixture
def artifacts():
    path = Path(settings.TEST_ARTIFACTS) / "e2e"
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_signup_verify_dashboard_invite(django_db_serialized_rollback, transactional_db, live_server, smtp_server,
                                        browser, artifacts, hearth_stripe):
    from billing.catalogue import catalogue_sync
    from tenants.models import Invitation, Tenant

    catalogue_sync()

    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)

    page.goto(f"{live_server.url}/accounts/signup/")
    page.get_by_label("Email").fill("grace@example.test")
    page.get_by_label("Password", exact=True).fill("a long passphrase 42")
    page.get_by_label("Password (again)").fill("a long passphrase 42")
    page.get_by_label("Organisation").fill("Hopper Labs")
    page.get_by_label("Plan").select_option("team")
    page.screenshot(path=artifacts / "01-signup.png", full_page=True)
    page.get_by_role("button", name="Sign up").click()
    page.get_by_role("heading", name="Check your email").wait_for()

    mail = smtp_server.wait_for(to="grace@example.test", subject_contains="Confirm your email address")
    link = smtp_server.link_in(mail, "/accounts/confirm-email/")
    assert link.startswith(live_server.url)
    page.goto(link)
    page.get_by_role("button", name="Yes, confirm").click()

    # Team is paid: the new tenant is on Free and its owner pays on Stripe's Checkout page first.
    page.get_by_role("heading", name="Subscribe").wait_for()
    assert page.url.startswith(f"{hearth_stripe}/_emulator/checkout/")
    tenant = Tenant.objects.get(name="Hopper Labs")
    assert tenant.plan.slug == "free"
    page.screenshot(path=artifacts / "02-checkout.png", full_page=True)
    page.get_by_role("button", name="Pay").click()
    page.get_by_role("heading", name="Billing of Hopper Labs", level=1).wait_for()
    assert page.url.startswith(f"{live_server.url}/billing/?checkout=")
    assert page.get_by_text("is on the Team plan").is_visible()
    page.screenshot(path=artifacts / "02-billing.png", full_page=True)
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Dashboard").click()
    page.get_by_role("heading", name="Hopper Labs", level=1).wait_for()
    assert page.get_by_role("heading", name="Plan: Team").is_visible()
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team"
    page.screenshot(path=artifacts / "02-dashboard.png", full_page=True)
    # The stylesheet loaded (served by the live server): the header bar has its white background.
    assert page.eval_on_selector(".site-header", "e => getComputedStyle(e).backgroundColor") == "rgb(255, 255, 255)"

    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Members").click()
    page.get_by_label("Email address").fill("ada@example.test")
    page.get_by_label("Role").select_option("admin")
    page.get_by_role("button", name="Send invitation").click()
    pending = page.locator("#pending-invitations")
    pending.get_by_text("ada@example.test").wait_for()
    assert "Admin" in pending.inner_text()
    assert page.get_by_text("Invitation sent to ada@example.test.").is_visible()
    invitation_link = page.locator("#invitation-link").input_value()
    assert re.fullmatch(rf"{re.escape(live_server.url)}/invitations/[\w-]+/", invitation_link)
    page.screenshot(path=artifacts / "03-members-invited.png", full_page=True)
    assert Invitation.objects.get(tenant=tenant, email="ada@example.test").role == "admin"
    invitation_mail = smtp_server.wait_for(to="ada@example.test", subject_contains="Join Hopper Labs")
    assert smtp_server.link_in(invitation_mail, "/invitations/") == invitation_link

    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Plans").click()
    page.get_by_role("heading", name="Plans", level=1).wait_for()
    page.screenshot(path=artifacts / "04-plans.png", full_page=True)
    page.get_by_role("navigation", name="Portal").get_by_role("link", name="Usage").click()
    page.get_by_role("heading", name="Usage of Hopper Labs", level=1).wait_for()
    assert page.locator("section.meter svg").count() == 5  # a chart per meter, inside the portal's layout
    page.screenshot(path=artifacts / "04-usage.png", full_page=True)

    # The same pages on a phone: nothing may overflow the viewport sideways.
    page.set_viewport_size(PHONE)
    for name, path in (("05-phone-dashboard", "/"), ("06-phone-members", "/members/"), ("06-phone-usage", "/usage/")):
        page.goto(f"{live_server.url}{path}")
        page.screenshot(path=artifacts / f"{name}.png", full_page=True)
        overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
        assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"

    # Ada opens her link in a fresh browser: she is offered to sign up for that address and join Hopper Labs.
    visitor = browser.new_context(viewport=PHONE)
    ada = visitor.new_page()
    ada.goto(invitation_link)
    ada.get_by_role("heading", name="Join Hopper Labs").wait_for()
    ada.screenshot(path=artifacts / "07-phone-invitation.png", full_page=True)
    ada.get_by_role("link", name="Create an account").click()
    ada.get_by_text("You are joining Hopper Labs as admin.").wait_for()
    assert ada.get_by_label("Email").input_value() == "ada@example.test"
    assert ada.get_by_label("Organisation").count() == 0
    ada.screenshot(path=artifacts / "08-phone-signup-invited.png", full_page=True)
    ada.get_by_label("Password", exact=True).fill("another long passphrase")
    ada.get_by_label("Password (again)").fill("another long passphrase")
    ada.get_by_role("button", name="Sign up").click()
    ada.get_by_role("heading", name="Check your email").wait_for()
    mail = smtp_server.wait_for(to="ada@example.test", subject_contains="Confirm your email address")
    ada.goto(smtp_server.link_in(mail, "/accounts/confirm-email/"))
    ada.get_by_role("button", name="Yes, confirm").click()
    ada.get_by_role("heading", name="Hopper Labs", level=1).wait_for()
    assert ada.get_by_text("You joined Hopper Labs as admin.").is_visible()
    assert Tenant.objects.count() == 1  # she joined; no tenant of her own
    ada.screenshot(path=artifacts / "09-phone-joined.png", full_page=True)
    visitor.close()
    context.close()
    assert (artifacts / "03-members-invited.png").stat().st_size > 10_000
