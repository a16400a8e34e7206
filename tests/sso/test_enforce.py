"""Enforced SSO: the tenant's members cannot sign in with a password, and only their API tokens created after
an SSO sign-in (and after the enforcement began) keep working."""
import html

import pytest
from django.urls import reverse

from tenants.models import Plan
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import oidc_provider_for
from tests.sso.test_login_oidc import sign_in

pytestmark = pytest.mark.django_db
PASSWORD = "correct horse battery"


def password_login(client, email):
    return client.post(reverse("account_login"), {"login": email, "password": PASSWORD})


def test_enforced_sso_blocks_the_password(client, acme, oidc_idp):
    tenant, owner, admin, member = acme
    other = MembershipFactory(tenant=TenantFactory(name="Elsewhere"), user__email="someone@else.test")
    oidc_provider_for(tenant, oidc_idp, enforce_sso=True)
    tenant.refresh_from_db()
    assert tenant.sso_enforced_at is not None

    response = password_login(client, member.user.email)
    assert response.status_code == 400
    assert ("Acme signs in through its identity provider, not with a password"
            in html.unescape(response.content.decode()))
    assert "_auth_user_id" not in client.session
    # A wrong password says nothing about SSO.
    response = client.post(reverse("account_login"), {"login": member.user.email, "password": "wrong"})
    assert "identity provider" not in response.content.decode()
    # Members of other tenants are not affected; the member gets in through the IdP.
    assert password_login(client, other.user.email).status_code == 302
    client.logout()
    assert sign_in(client, oidc_idp, member.user.email).status_code == 302
    assert client.session["_auth_user_id"] == str(member.user.pk)


def test_enforcement_needs_a_verified_domain_and_a_plan_with_sso(client, acme, oidc_idp):
    tenant, owner, admin, member = acme
    oidc_provider_for(tenant, oidc_idp, enforce_sso=True, verified=False)
    tenant.refresh_from_db()
    assert tenant.sso_enforced_at is None  # else nobody could sign in at all
    assert password_login(client, member.user.email).status_code == 302


def test_tokens_made_before_enforcement_or_without_sso_stop_working(client, acme, oidc_idp):
    tenant, owner, admin, member = acme
    provider = oidc_provider_for(tenant, oidc_idp)
    before = api_client_for(member)
    assert before.get("/api/v1/tenant").status_code == 200

    from sso import services

    services.identity_provider_update(identity_provider=provider, actor=owner.user, enforce_sso=True)
    response = before.get("/api/v1/tenant")
    assert response.status_code == 401 and response.json()["code"] == "sso_required"
    assert "Sign in through your identity provider" in response.json()["detail"]
    # A token made now, but not by a session that signed in through the IdP, does not work either.
    assert api_client_for(member).get("/api/v1/tenant").status_code == 401

    sign_in(client, oidc_idp, member.user.email)
    response = client.post(reverse("portal:api_tokens"), {"name": "ci"})
    assert response.status_code == 201
    plaintext = response.context["created"]["plaintext"]
    assert client.get("/").status_code == 200
    from rest_framework.test import APIClient

    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert api.get("/api/v1/tenant").status_code == 200
    # A token it makes counts as made after the SSO sign-in.
    made = api.post("/api/v1/tokens", {"name": "child"}, format="json").json()["token"]
    api.credentials(HTTP_AUTHORIZATION=f"Bearer {made}")
    assert api.get("/api/v1/tenant").status_code == 200

    # Lifting the enforcement (or a plan without SSO) brings the old token back.
    tenant.plan = Plan.objects.get(slug="pro")
    tenant.save()
    assert before.get("/api/v1/tenant").status_code == 200


def test_the_enforcement_check_costs_api_calls_no_query(acme, oidc_idp):
    """The token's lookup already loads the tenant and its plan (tenants.tokens): the check reads them."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    tenant, owner, admin, member = acme
    api = api_client_for(member)
    api.get("/api/v1/tenant")  # last_used_at is written on the first call
    with CaptureQueriesContext(connection) as plain:
        assert api.get("/api/v1/tenant").status_code == 200
    oidc_provider_for(tenant, oidc_idp, enforce_sso=True)
    with CaptureQueriesContext(connection) as enforced:
        assert api.get("/api/v1/tenant").status_code == 401
    assert len(enforced) <= len(plain)
