"""Fixtures of the SSO tests: a real OpenID provider and a real DNS server, both on loopback."""
import shutil

import pytest

from tests.conftest import require_service
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.support import IDP_DIR, DnsServer, OidcProvider

# The Django test client's host: the redirect URI registered at the provider.
CALLBACK = "http://testserver/sso/oidc/callback/"
CLIENT_A = {"client_id": "hearth-acme", "client_secret": "acme-secret", "redirect_uris": [CALLBACK]}
CLIENT_B = {"client_id": "hearth-globex", "client_secret": "globex-secret", "redirect_uris": [CALLBACK]}
ACCOUNTS = {
    "ada@acme.test": {"name": "Ada Lovelace", "given_name": "Ada", "family_name": "Lovelace",
                      "groups": ["platform-admins", "staff"]},
    "unverified@acme.test": {"email_verified": False},
}


def idp_start(**kwargs):
    def check():
        if shutil.which("node") is None:
            raise FileNotFoundError("node")
        if not (IDP_DIR / "node_modules" / "oidc-provider").exists():
            raise FileNotFoundError(f"{IDP_DIR}/node_modules (run `npm ci` there; `make test` does)")
    require_service("The test OpenID provider (Node + npm oidc-provider)", check)
    return OidcProvider(**kwargs)


@pytest.fixture(scope="session")
def oidc_idp():
    provider = idp_start(clients=[CLIENT_A, CLIENT_B], accounts=ACCOUNTS)
    yield provider
    provider.stop()


@pytest.fixture
def dns_server(settings):
    server = DnsServer()
    settings.SSO_DNS_NAMESERVERS = [f"127.0.0.1:{server.port}"]
    settings.SSO_DNS_TIMEOUT = 2.0
    yield server
    server.stop()


@pytest.fixture
def acme(db):
    """An Enterprise tenant (SSO, unlimited seats) with an owner, an admin and a member."""
    from tenants.models import Plan

    tenant = TenantFactory(name="Acme", slug="acme", plan=Plan.objects.get(slug="enterprise"))
    owner = MembershipFactory(tenant=tenant, role="owner", user__email="owner@acme.test")
    admin = MembershipFactory(tenant=tenant, role="admin", user__email="admin@acme.test")
    member = MembershipFactory(tenant=tenant, role="member", user__email="member@acme.test")
    return tenant, owner, admin, member


def oidc_provider_for(tenant, idp, *, client=CLIENT_A, domains=("acme.test",), verified=True, **fields):
    """An OIDC identity provider of `tenant` at the test provider, its domains verified by staff."""
    from sso import services

    owner = tenant.memberships.filter(role="owner").first().user
    provider = services.identity_provider_create(
        tenant=tenant, actor=owner, kind="oidc", issuer=idp.issuer, client_id=client["client_id"],
        client_secret=client["client_secret"], scopes="openid email profile groups", domains=list(domains),
        **fields)
    if verified:
        for domain in domains:
            services.domain_verify_by_staff(domain=domain, actor="test", identity_provider=provider)
    provider.refresh_from_db()
    return provider


# --- SAML: pysaml2's Server over HTTP (tests/sso/saml_idp.py) -----------------------------------------------------

SAML_ACCOUNTS = {"ada@acme.test": {"name": "Ada Lovelace", "given_name": "Ada", "family_name": "Lovelace",
                                   "groups": ["platform-admins", "staff"]}}


@pytest.fixture(scope="session")
def saml_idp():
    from tests.sso.saml_idp import SamlIdp

    def check():
        if shutil.which("xmlsec1") is None:
            raise FileNotFoundError("xmlsec1")

    require_service("xmlsec1 (Debian's package; `make test` installs it)", check)
    idp = SamlIdp(accounts=SAML_ACCOUNTS)
    yield idp
    idp.stop()


def saml_provider_for(tenant, idp, *, domains=("acme.test",), verified=True, **fields):
    """A SAML identity provider of `tenant` with the test IdP's metadata, its domains verified by staff; the IdP
    trusts Hearth's SP metadata, read from its public URL."""
    from django.test import Client

    from sso import services

    owner = tenant.memberships.filter(role="owner").first().user
    fields.setdefault("metadata_xml", idp.metadata_xml)
    provider = services.identity_provider_create(tenant=tenant, actor=owner, kind="saml", domains=list(domains),
                                                 **fields)
    if verified:
        for domain in domains:
            services.domain_verify_by_staff(domain=domain, actor="test", identity_provider=provider)
    response = Client().get(f"/sso/saml/{provider.pk}/metadata/")
    assert response.status_code == 200, response.content[:300]
    idp.trust(response.content.decode())
    provider.refresh_from_db()
    return provider


# --- SCIM --------------------------------------------------------------------------------------------------------

SCIM = "/scim/v2"
SCIM_JSON = "application/scim+json"


class ScimClient:
    """The directory's side: JSON in application/scim+json with the SCIM token, through Django's test client."""

    def __init__(self, token):
        from django.test import Client

        self.token, self.client = token, Client()

    def request(self, method, path, body=None, *, raw=None, token=None, content_type=SCIM_JSON):
        import json

        headers = {"HTTP_AUTHORIZATION": f"Bearer {token or self.token}"} if (token or self.token) else {}
        data = raw if raw is not None else (json.dumps(body) if body is not None else "")
        return getattr(self.client, method)(f"{SCIM}{path}", data=data, content_type=content_type, **headers)

    def get(self, path, body=None, **kwargs):
        return self.request("get", path, body, **kwargs)

    def post(self, path, body=None, **kwargs):
        return self.request("post", path, body, **kwargs)

    def put(self, path, body=None, **kwargs):
        return self.request("put", path, body, **kwargs)

    def patch(self, path, body=None, **kwargs):
        return self.request("patch", path, body, **kwargs)

    def delete(self, path, body=None, **kwargs):
        return self.request("delete", path, body, **kwargs)


def scim_provider_for(tenant, *, domains=("acme.test",), group_roles=None):
    """An OIDC identity provider of `tenant` (no IdP behind it: SCIM needs none) with its domains verified by staff,
    and its SCIM token; returns (provider, plaintext)."""
    from sso import scim, services

    owner = tenant.memberships.filter(role="owner").first().user
    provider = services.identity_provider_create(
        tenant=tenant, actor=owner, kind="oidc", issuer=f"https://login.{domains[0]}", client_id="hearth",
        client_secret="s3cret", domains=list(domains), group_roles=group_roles or {"platform-admins": "admin"})
    for domain in domains:
        services.domain_verify_by_staff(domain=domain, actor="test", identity_provider=provider)
    _, plaintext, _ = scim.scim_token_issue(identity_provider=provider, actor=owner)
    provider.refresh_from_db()
    return provider, plaintext


@pytest.fixture
def acme_scim(acme):
    """Acme's identity provider and a SCIM client holding its token."""
    provider, token = scim_provider_for(acme[0])
    return provider, ScimClient(token)


def scim_user_body(email, **extra):
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": email,
            "name": {"givenName": "Grace", "familyName": "Hopper"}, "emails": [{"value": email, "primary": True}],
            "active": True, "externalId": f"ext-{email}", **extra}


def scim_patch(*operations):
    return {"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"], "Operations": list(operations)}
