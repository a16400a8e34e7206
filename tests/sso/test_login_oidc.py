"""OIDC sign-in through a tenant's identity provider, against a real provider (npm oidc-provider) over HTTP:
routing by verified domain, the authorization code flow with PKCE, JIT provisioning and role mapping, and every
refusal (state, nonce, audience, expiry, another tenant's addresses, unverified domains, a full plan)."""
import html
from urllib.parse import parse_qs, urlparse

import pytest
from django.urls import reverse

from sso.models import SsoIdentity
from tenants.models import Membership, Plan, User
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import CLIENT_B, oidc_provider_for

pytestmark = pytest.mark.django_db


def text(response):
    return html.unescape(response.content.decode())


def start(client, email):
    """The sign-in's first steps: the address, then Hearth's redirect to the provider's authorization endpoint."""
    response = client.get(reverse("sso:login"), {"email": email})
    assert response.status_code == 302, response.content[:300]
    assert response["Location"].startswith("/sso/oidc/"), response["Location"]
    response = client.get(response["Location"])
    assert response.status_code == 302
    return response["Location"]


def callback(client, url):
    parsed = urlparse(url)
    assert f"{parsed.scheme}://{parsed.netloc}" == "http://testserver", url
    return client.get(parsed.path, parse_qs(parsed.query))


def sign_in(client, idp, email, *, login=None):
    authorize = start(client, email)
    return callback(client, idp.sign_in(authorize, login=login or email))


def signed_in_user(client):
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


def test_first_sign_in_provisions_the_member_with_the_mapped_role(client, acme, oidc_idp):
    tenant, *_ = acme
    provider = oidc_provider_for(tenant, oidc_idp, group_roles={"platform-admins": "admin"})
    authorize = start(client, "ada@acme.test")
    query = parse_qs(urlparse(authorize).query)
    assert authorize.startswith(oidc_idp.issuer)
    assert query["client_id"] == ["hearth-acme"] and query["code_challenge_method"] == ["S256"]
    assert query["nonce"] and query["state"] and query["login_hint"] == ["ada@acme.test"]

    response = callback(client, oidc_idp.sign_in(authorize, login="ada@acme.test"))

    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard")
    user = signed_in_user(client)
    assert user.email == "ada@acme.test" and (user.first_name, user.last_name) == ("Ada", "Lovelace")
    assert not user.has_usable_password()
    assert Membership.objects.get(tenant=tenant, user=user).role == "admin"
    assert SsoIdentity.objects.get(identity_provider=provider, subject="ada@acme.test").user == user
    assert client.session["hearth_sso_login"]["tenant"] == tenant.pk
    assert user.emailaddress_set.get().verified
    assert tenant.audit_log.filter(action="member.joined", target="ada@acme.test").exists()


def test_later_sign_ins_update_name_and_role_and_keep_other_tenants(client, acme, oidc_idp):
    tenant, *_ = acme
    provider = oidc_provider_for(tenant, oidc_idp, group_roles={"platform-admins": "admin"})
    sign_in(client, oidc_idp, "ada@acme.test")
    user = User.objects.get(email="ada@acme.test")
    personal = MembershipFactory(user=user, role="owner", tenant=TenantFactory(name="Ada's own",
                                                                             plan=Plan.objects.get(slug="free")))
    # The IdP's group no longer maps to admin; the name Hearth holds differs from the IdP's.
    provider.group_roles = {}
    provider.save()
    User.objects.filter(pk=user.pk).update(first_name="Old")
    client.logout()

    assert sign_in(client, oidc_idp, "ada@acme.test").status_code == 302

    user.refresh_from_db()
    assert user.first_name == "Ada"
    assert Membership.objects.get(tenant=tenant, user=user).role == "member"
    assert Membership.objects.filter(pk=personal.pk, role="owner").exists()
    assert User.objects.filter(email="ada@acme.test").count() == 1


def test_an_existing_owner_keeps_the_owner_role(client, acme, oidc_idp):
    tenant, owner, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    sign_in(client, oidc_idp, "owner@acme.test")
    assert signed_in_user(client) == owner.user
    owner.refresh_from_db()
    assert owner.role == "owner"


def test_a_full_plan_gets_a_clear_page(client, acme, oidc_idp):
    tenant, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    tenant.plan = Plan.objects.get(slug="team")  # 3 seats, all taken
    tenant.save()
    response = sign_in(client, oidc_idp, "newcomer@acme.test")
    assert response.status_code == 409
    assert "Acme has no free seat on its Team plan" in text(response)
    assert signed_in_user(client) is None
    assert not User.objects.filter(email="newcomer@acme.test").exists()


def test_a_wrong_state_is_refused(client, acme, oidc_idp):
    tenant, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    authorize = start(client, "ada@acme.test")
    returned = urlparse(oidc_idp.sign_in(authorize, login="ada@acme.test"))
    query = parse_qs(returned.query)
    query["state"] = ["forged-state"]
    response = client.get(returned.path, query)
    assert response.status_code == 400 and "state is unknown" in text(response)
    assert signed_in_user(client) is None
    # The real state still works once; used, it is refused.
    response = client.get(returned.path, parse_qs(returned.query))
    assert response.status_code == 302 and signed_in_user(client).email == "ada@acme.test"
    client.logout()
    assert client.get(returned.path, parse_qs(returned.query)).status_code == 400


def test_a_wrong_nonce_is_refused(client, acme, oidc_idp):
    tenant, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    authorize = start(client, "ada@acme.test")
    state = parse_qs(urlparse(authorize).query)["state"][0]
    session = client.session
    session["oidc_states"][state]["nonce"] = "another-sign-in's-nonce"  # the ID token will carry the real one
    session.save()
    response = callback(client, oidc_idp.sign_in(authorize, login="ada@acme.test"))
    assert response.status_code == 400 and "nonce does not match" in text(response)
    assert signed_in_user(client) is None and not User.objects.filter(email="ada@acme.test").exists()


def test_tenant_a_idp_cannot_sign_in_an_address_of_tenant_b(client, acme, oidc_idp):
    tenant, *_ = acme
    globex = TenantFactory(name="Globex", slug="globex")
    victim = MembershipFactory(tenant=globex, role="owner", user__email="boss@globex.test")
    oidc_provider_for(globex, oidc_idp, client=CLIENT_B, domains=("globex.test",))
    oidc_provider_for(tenant, oidc_idp)
    # Acme's provider is asked for an Acme address but answers with a Globex one.
    response = sign_in(client, oidc_idp, "ada@acme.test", login="boss@globex.test")
    assert response.status_code == 403
    assert "not an address of Acme's verified domains" in text(response)
    assert signed_in_user(client) is None
    assert not Membership.objects.filter(tenant=tenant, user=victim.user).exists()
    assert list(Membership.objects.filter(user=victim.user).values_list("tenant__slug", flat=True)) == ["globex"]


def test_an_address_the_idp_has_not_verified_is_refused(client, acme, oidc_idp):
    tenant, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    response = sign_in(client, oidc_idp, "unverified@acme.test")
    assert response.status_code == 403 and "has not verified" in text(response)
    assert signed_in_user(client) is None


def test_an_unverified_domain_does_not_route(client, acme, oidc_idp):
    tenant, *_ = acme
    provider = oidc_provider_for(tenant, oidc_idp, verified=False)
    response = client.get(reverse("sso:login"), {"email": "ada@acme.test"})
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('account_login')}?email=ada%40acme.test"
    page = client.get(response["Location"]).content.decode()
    assert 'name="password"' in page and 'value="ada@acme.test"' in page
    # Nor does its start URL lead anywhere.
    response = client.get(reverse("sso:oidc-start", args=[provider.pk]))
    assert response.status_code == 404 and b"oidc_states" not in repr(dict(client.session)).encode()


def test_a_plan_without_sso_does_not_route(client, acme, oidc_idp):
    tenant, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    tenant.plan = Plan.objects.get(slug="pro")
    tenant.save()
    response = client.get(reverse("sso:login"), {"email": "ada@acme.test"})
    assert response["Location"].startswith(f"{reverse('account_login')}?email=")


def test_sign_in_page_asks_for_the_email_first(client):
    page = client.get(reverse("account_login")).content.decode()
    assert f'action="{reverse("sso:login")}"' in page and 'name="password"' not in page
    response = client.get(reverse("sso:login"), {"email": "not-an-address"})
    assert response.status_code == 400 and "is not an email address" in text(response)
    response = client.get(reverse("sso:login"), {"email": "someone@example.test"})
    assert response["Location"] == f"{reverse('account_login')}?email=someone%40example.test"


def test_the_providers_error_is_shown_and_its_state_spent(client, acme, oidc_idp):
    tenant, *_ = acme
    oidc_provider_for(tenant, oidc_idp)
    state = parse_qs(urlparse(start(client, "ada@acme.test")).query)["state"][0]
    response = client.get(reverse("sso:oidc-callback"), {"state": state, "error": "access_denied",
                                                         "error_description": "The user said no"})
    assert response.status_code == 403 and "refused the sign-in: The user said no" in text(response)
    assert state not in client.session["oidc_states"]


def test_a_provider_that_does_not_answer_is_a_503_page(client, acme, oidc_idp):
    from sso.models import IdentityProvider
    from tests.sso.support import free_port

    tenant, *_ = acme
    provider = oidc_provider_for(tenant, oidc_idp)
    IdentityProvider.objects.filter(pk=provider.pk).update(issuer=f"http://127.0.0.1:{free_port()}")
    response = client.get(reverse("sso:login"), {"email": "ada@acme.test"})
    response = client.get(response["Location"])
    assert response.status_code == 503 and "did not answer" in text(response)


def test_a_callback_without_a_sign_in_is_a_400_page(client, db):
    response = client.get(reverse("sso:oidc-callback"))
    assert response.status_code == 400 and "start again from the sign-in page" in text(response)
