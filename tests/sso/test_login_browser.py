"""One OIDC and one SAML sign-in end to end in headless Chromium: Hearth's sign-in page → the email → the
tenant's identity provider (npm oidc-provider, or pysaml2's Server over HTTP; each with its own login page) → back
to Hearth, signed in as a new member. Nothing is mocked."""
from pathlib import Path

import pytest

from tests.e2e.test_signup_browser import browser  # noqa: F401  (Debian's Chromium, fails under CI if missing)
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import idp_start, oidc_provider_for, saml_provider_for

pytestmark = pytest.mark.browser


@pytest.fixture
def live_idp(live_server):
    """A provider whose client's redirect URI is the live server's callback (the host Chromium uses)."""
    provider = idp_start(clients=[{"client_id": "hearth-live", "client_secret": "live-secret",
                                   "redirect_uris": [f"{live_server.url}/sso/oidc/callback/"]}],
                         accounts={"grace@hopper.test": {"name": "Grace Hopper", "groups": ["admins"]}})
    yield provider
    provider.stop()


def test_oidc_sign_in_in_chromium(transactional_db, live_server, live_idp, browser, settings):  # noqa: F811
    from tenants.models import Membership, Plan

    tenant = TenantFactory(name="Hopper Labs", slug="hopper", plan=Plan.objects.get(slug="enterprise"))
    MembershipFactory(tenant=tenant, role="owner", user__email="owner@hopper.test")
    oidc_provider_for(tenant, live_idp, client=live_idp.clients[0], domains=("hopper.test",),
                      group_roles={"admins": "admin"})
    artifacts = Path(settings.TEST_ARTIFACTS) / "e2e"
    artifacts.mkdir(parents=True, exist_ok=True)

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill("grace@hopper.test")
    page.screenshot(path=artifacts / "sso-01-email.png", full_page=True)
    page.get_by_role("button", name="Continue").click()

    page.wait_for_url(f"{live_idp.issuer}/interaction/**")
    page.locator("input[name=login]").fill("grace@hopper.test")
    page.locator("input[name=password]").fill("anything")
    page.screenshot(path=artifacts / "sso-02-idp.png", full_page=True)
    page.locator("button[type=submit]").first.click()

    page.get_by_role("heading", name="Hopper Labs", level=1).wait_for()
    assert page.url.rstrip("/") == live_server.url
    page.screenshot(path=artifacts / "sso-03-dashboard.png", full_page=True)
    membership = Membership.objects.get(tenant=tenant, user__email="grace@hopper.test")
    assert membership.role == "admin" and membership.user.first_name == "Grace"


def test_saml_sign_in_in_chromium(transactional_db, live_server, saml_idp, browser, settings):  # noqa: F811
    """The IdP (127.0.0.1) and Hearth (localhost) are different sites: the IdP's POST to the ACS is cross-site, as
    in production, so the SAML session's cookie must follow it (SameSite=None; Secure)."""
    from tenants.models import Membership, Plan

    settings.HEARTH_BASE_URL = live_server.url
    tenant = TenantFactory(name="Lovelace Labs", slug="lovelace", plan=Plan.objects.get(slug="enterprise"))
    MembershipFactory(tenant=tenant, role="owner", user__email="owner@acme.test")
    saml_provider_for(tenant, saml_idp, domains=("acme.test",), group_roles={"platform-admins": "admin"})
    artifacts = Path(settings.TEST_ARTIFACTS) / "e2e"
    artifacts.mkdir(parents=True, exist_ok=True)

    page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
    page.set_default_timeout(15_000)
    page.goto(f"{live_server.url}/accounts/login/")
    page.get_by_label("Email").fill("ada@acme.test")
    page.get_by_role("button", name="Continue").click()

    page.wait_for_url(f"{saml_idp.url}/sso/redirect?**")
    page.locator("input[name=login]").fill("ada@acme.test")
    page.locator("input[name=password]").fill("anything")
    page.screenshot(path=artifacts / "saml-01-idp.png", full_page=True)
    page.get_by_role("button", name="Sign in").click()  # the IdP answers a form that posts itself to the ACS

    page.get_by_role("heading", name="Lovelace Labs", level=1).wait_for()
    assert page.url.rstrip("/") == live_server.url
    page.screenshot(path=artifacts / "saml-02-dashboard.png", full_page=True)
    membership = Membership.objects.get(tenant=tenant, user__email="ada@acme.test")
    assert membership.role == "admin" and membership.user.first_name == "Ada"
