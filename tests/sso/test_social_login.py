"""Social sign-in for self-serve sign-up (allauth's GitHub and OpenID Connect providers) against real servers over
HTTP: a small GitHub OAuth2 server (tests/sso/github_server.py) and npm oidc-provider standing in for Google.
Sign-up makes a tenant, an existing account links only by a verified address, an unverified address or a wrong
state never signs anyone in, a tenant enforcing SSO keeps its members on their IdP, and an unconfigured provider
does not exist."""
import html
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from allauth.socialaccount.providers.github.views import GitHubOAuth2Adapter
from django.urls import reverse

from sso import services as sso_services
from tenants.models import Membership, Plan, User
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from tests.sso.conftest import idp_start
from tests.sso.github_server import GitHubServer

pytestmark = pytest.mark.django_db

GITHUB_CALLBACK = "http://testserver/accounts/github/login/callback/"
GOOGLE_CALLBACK = "http://testserver/accounts/oidc/google/login/callback/"
GOOGLE_CLIENT = {"client_id": "hearth-google", "client_secret": "google-secret", "redirect_uris": [GOOGLE_CALLBACK]}


@pytest.fixture(scope="module")
def github_server():
    server = GitHubServer(client_id="gh-client", client_secret="gh-secret")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def google_idp():
    provider = idp_start(clients=[GOOGLE_CLIENT], accounts={"nina@unverified.test": {"email_verified": False}})
    yield provider
    provider.stop()


@pytest.fixture
def github(settings, monkeypatch, github_server):
    """GitHub sign-in on, at the test server. allauth computes its GitHub URLs from GITHUB_URL when its module is
    imported, so the test sets them as allauth would for this server's URL."""
    settings.SOCIALACCOUNT_PROVIDERS = {"github": {"APP": {"client_id": "gh-client", "secret": "gh-secret"},
                                                   "SCOPE": ["read:user", "user:email"],
                                                   "GITHUB_URL": github_server.url}}
    for name, url in (("access_token_url", "/login/oauth/access_token"), ("authorize_url", "/login/oauth/authorize"),
                      ("profile_url", "/api/v3/user"), ("emails_url", "/api/v3/user/emails")):
        monkeypatch.setattr(GitHubOAuth2Adapter, name, github_server.url + url)
    github_server.accounts.clear()
    return github_server


@pytest.fixture
def google(settings, google_idp):
    settings.SOCIALACCOUNT_PROVIDERS = {"openid_connect": {"APPS": [{
        "provider_id": "google", "name": "Google", "client_id": GOOGLE_CLIENT["client_id"],
        "secret": GOOGLE_CLIENT["client_secret"],
        "settings": {"server_url": google_idp.issuer, "scope": ["openid", "email", "profile"],
                     "oauth_pkce_enabled": True}}]}}
    return google_idp


def text(response):
    return html.unescape(response.content.decode())


def signed_in_user(client):
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


def callback(client, url):
    parsed = urlparse(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == "http://testserver", url
    return client.get(parsed.path, {k: v[0] for k, v in parse_qs(parsed.query).items()})


def github_sign_in(client, github, login):
    """The button (a POST), GitHub's authorize page signing in `login`, and the callback to Hearth."""
    response = client.post(reverse("github_login"), {"process": "login"})
    assert response.status_code == 302, response.content[:300]
    authorize = response["Location"]
    assert authorize.startswith(github.url + "/login/oauth/authorize?")
    github.signing_in = login
    at_github = requests.get(authorize, allow_redirects=False, timeout=10)
    assert at_github.status_code == 302, at_github.text
    return callback(client, at_github.headers["Location"])


def test_github_sign_up_creates_the_user_and_their_tenant(client, github):
    github.add_account("dan", uid=4242, name="Dan Abramov", emails=[("dan@example.com", True)])

    response = github_sign_in(client, github, "dan")

    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard"), text(response)[:500]
    user = signed_in_user(client)
    assert user.email == "dan@example.com" and not user.has_usable_password()
    assert EmailAddress.objects.get(user=user, email="dan@example.com").verified
    assert SocialAccount.objects.get(user=user, provider="github").uid == "4242"
    membership = Membership.objects.get(user=user)
    assert membership.role == "owner" and membership.tenant.name == "dan's team"
    assert membership.tenant.plan.slug == "free"
    # The next sign-in finds the same account by its link.
    client.logout()
    assert github_sign_in(client, github, "dan").status_code == 302
    assert signed_in_user(client) == user and User.objects.filter(email="dan@example.com").count() == 1


def test_a_new_user_with_an_unverified_address_confirms_it_by_mail_first(client, github, smtp_server):
    github.add_account("uma", uid=999, emails=[("uma@example.com", False)])

    response = github_sign_in(client, github, "uma")

    assert response.status_code == 302 and response["Location"] == reverse("account_email_verification_sent")
    assert signed_in_user(client) is None
    user = User.objects.get(email="uma@example.com")
    assert not EmailAddress.objects.get(user=user).verified
    assert Membership.objects.get(user=user).role == "owner"  # the tenant is made with the account, as for passwords
    smtp_server.wait_for(to="uma@example.com", subject_contains="confirm")


def test_without_an_address_the_sign_up_form_asks_for_one_and_makes_one_tenant(client, github, smtp_server):
    github.add_account("nomail", uid=1001, emails=[])

    response = github_sign_in(client, github, "nomail")

    assert response.status_code == 302 and response["Location"] == reverse("socialaccount_signup")
    page = client.get(reverse("socialaccount_signup"))
    assert page.status_code == 200 and 'name="organisation"' in text(page)
    response = client.post(reverse("socialaccount_signup"),
                           {"email": "nomail@example.com", "organisation": "Nomail Ltd", "plan": "free"})
    assert response.status_code == 302, text(response)[:1500]
    user = User.objects.get(email="nomail@example.com")
    assert [m.tenant.name for m in Membership.objects.filter(user=user)] == ["Nomail Ltd"]
    assert SocialAccount.objects.get(user=user).uid == "1001"
    smtp_server.wait_for(to="nomail@example.com", subject_contains="confirm")


def test_a_verified_github_address_links_the_existing_account(client, github):
    carol = UserFactory(email="carol@example.com")
    carol.set_password("a-long-password-1")
    carol.save()
    EmailAddress.objects.create(user=carol, email="carol@example.com", verified=True, primary=True)
    tenant = TenantFactory()
    MembershipFactory(tenant=tenant, user=carol, role="owner")
    github.add_account("carol", uid=777, emails=[("carol@example.com", True)])

    response = github_sign_in(client, github, "carol")

    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard"), text(response)[:500]
    assert signed_in_user(client) == carol
    assert SocialAccount.objects.get(provider="github", uid="777").user == carol
    assert Membership.objects.filter(user=carol).count() == 1  # no second tenant
    carol.refresh_from_db()
    assert carol.check_password("a-long-password-1")  # her address was verified: her password stays


def test_an_unverified_github_address_never_takes_over_an_existing_account(client, github, smtp_server):
    victim = UserFactory(email="victim@example.com")
    victim.set_password("a-long-password-2")
    victim.save()
    EmailAddress.objects.create(user=victim, email="victim@example.com", verified=True, primary=True)
    github.add_account("mallory", uid=666, emails=[("victim@example.com", False)])

    response = github_sign_in(client, github, "mallory")

    assert signed_in_user(client) is None
    assert not SocialAccount.objects.filter(uid="666").exists()
    # allauth's enumeration guard: the page says a confirmation was sent, and the address's owner is told that
    # someone tried to sign up with it. Nobody is signed in, linked or created.
    assert response.status_code == 302 and response["Location"] == reverse("account_email_verification_sent")
    assert "already" in smtp_server.body(smtp_server.wait_for(to="victim@example.com")).lower()
    assert User.objects.filter(email="victim@example.com").count() == 1
    victim.refresh_from_db()
    assert victim.check_password("a-long-password-2")


def test_a_wrong_state_is_refused(client, github):
    github.add_account("erin", uid=555, emails=[("erin@example.com", True)])
    response = client.post(reverse("github_login"), {"process": "login"})
    github.signing_in = "erin"
    at_github = requests.get(response["Location"], allow_redirects=False, timeout=10)
    back = urlparse(at_github.headers["Location"])
    query = {k: v[0] for k, v in parse_qs(back.query).items()}
    assert query["state"]
    exchanges = github.requests.count(("POST", "/login/oauth/access_token"))

    response = client.get(back.path, {**query, "state": "not-the-state-we-sent"})

    assert response.status_code == 401
    assert signed_in_user(client) is None and not User.objects.filter(email="erin@example.com").exists()
    assert github.requests.count(("POST", "/login/oauth/access_token")) == exchanges  # the code was never exchanged
    # The state sent still works once (the forged one did not use it up), and not twice.
    assert client.get(back.path, query).status_code == 302 and signed_in_user(client) is not None
    assert client.get(back.path, query).status_code == 401  # same session: the state was used up


def test_social_sign_in_does_not_bypass_enforced_sso(client, github):
    tenant = TenantFactory(name="Initech", slug="initech", plan=Plan.objects.get(slug="enterprise"))
    owner = MembershipFactory(tenant=tenant, role="owner", user__email="boss@initech.test").user
    member = MembershipFactory(tenant=tenant, role="member", user__email="peter@initech.test").user
    sso_services.identity_provider_create(
        tenant=tenant, actor=owner, kind="oidc", issuer="https://idp.initech.test", client_id="hearth",
        client_secret="s3cret", domains=["initech.test"], enforce_sso=True)
    sso_services.domain_verify_by_staff(domain="initech.test", actor="test")
    tenant.refresh_from_db()
    assert tenant.sso_enforced_at is not None
    github.add_account("peter", uid=31337, emails=[("peter@initech.test", True)])

    response = github_sign_in(client, github, "peter")

    assert response.status_code == 403 and "sso_required" in text(response)
    assert "Initech signs in through its identity provider, not with GitHub" in text(response)
    assert signed_in_user(client) is None
    assert not SocialAccount.objects.filter(user=member).exists()


def test_google_sign_up_through_openid_connect(client, google):
    response = client.post(reverse("openid_connect_login", args=["google"]), {"process": "login"})
    assert response.status_code == 302, text(response)[:500]
    authorize = response["Location"]
    query = parse_qs(urlparse(authorize).query)
    assert authorize.startswith(google.issuer) and query["code_challenge_method"] == ["S256"]

    response = callback(client, google.sign_in(authorize, login="gina@example.org"))

    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard"), text(response)[:800]
    user = signed_in_user(client)
    assert user.email == "gina@example.org"
    assert EmailAddress.objects.get(user=user).verified
    assert SocialAccount.objects.get(user=user).provider == "google"
    assert Membership.objects.get(user=user).role == "owner"


def test_google_unverified_address_does_not_link(client, google, smtp_server):
    existing = UserFactory(email="nina@unverified.test")
    EmailAddress.objects.create(user=existing, email="nina@unverified.test", verified=True, primary=True)
    response = client.post(reverse("openid_connect_login", args=["google"]), {"process": "login"})

    response = callback(client, google.sign_in(response["Location"], login="nina@unverified.test"))

    assert signed_in_user(client) is None
    assert not SocialAccount.objects.filter(user=existing).exists()
    assert response.status_code == 302 and response["Location"] == reverse("account_email_verification_sent")
    assert User.objects.filter(email__iexact="nina@unverified.test").count() == 1


def test_unconfigured_providers_have_no_button_and_no_urls(client, settings):
    settings.SOCIALACCOUNT_PROVIDERS = {}
    page = client.get(reverse("account_login"))
    assert page.status_code == 200 and 'data-provider="' not in text(page)
    assert client.post(reverse("github_login")).status_code == 404
    assert client.get(reverse("github_callback"), {"code": "x", "state": "y"}).status_code == 404
    assert client.post(reverse("openid_connect_login", args=["google"])).status_code == 404


def test_configured_providers_show_their_buttons(client, github, settings):
    page = text(client.get(reverse("account_login")))
    assert 'data-provider="github"' in page and 'data-provider="google"' not in page
    assert 'data-provider="github"' in text(client.get(reverse("account_signup")))
