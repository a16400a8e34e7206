"""GET/POST /api/v1/identity-providers and GET/PATCH/DELETE /api/v1/identity-providers/{id}: owners only, every
verb tried from another tenant and from a member without the role; the client secret is never returned."""
import pytest

from sso import encryption
from sso.models import IdentityProvider
from tenants.models import AuditLog, Plan
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db

URL = "/api/v1/identity-providers"
BODY = {"kind": "oidc", "issuer": "https://login.acme.test", "client_id": "hearth", "client_secret": "s3cret-value",
        "scopes": "openid email profile groups", "domains": ["Acme.TEST", "eu.acme.test"], "default_role": "member",
        "group_roles": {"platform-admins": "admin"}, "enforce_sso": False}


def url(pk):
    return f"{URL}/{pk}"


def test_create_list_get_patch_delete(acme):
    tenant, owner, *_ = acme
    api = api_client_for(owner)
    response = api.post(URL, BODY, format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["id"] and body["kind"] == "oidc" and body["client_id"] == "hearth"
    assert body["domains"] == ["acme.test", "eu.acme.test"]
    assert all(not d["verified"] and d["txt_record"].startswith("hearth-verification=")
               for d in body["domain_verification"])
    assert "client_secret" not in body and body["client_secret_set"] is True
    assert "s3cret-value" not in response.content.decode()
    stored = IdentityProvider.objects.get(pk=body["id"])
    assert "s3cret" not in stored.client_secret_encrypted
    assert encryption.decrypt(stored.client_secret_encrypted) == "s3cret-value"

    assert [p["id"] for p in api.get(URL).json()] == [body["id"]]
    assert api.get(url(body["id"])).json()["group_roles"] == {"platform-admins": "admin"}
    assert "s3cret-value" not in api.get(URL).content.decode()

    response = api.patch(url(body["id"]), {"domains": ["acme.test"], "client_secret": "rotated"}, format="json")
    assert response.status_code == 200 and response.json()["domains"] == ["acme.test"]
    stored.refresh_from_db()
    assert encryption.decrypt(stored.client_secret_encrypted) == "rotated"

    assert api.delete(url(body["id"])).status_code == 204
    assert not IdentityProvider.objects.filter(pk=body["id"]).exists()
    assert set(AuditLog.objects.filter(tenant=tenant, action__startswith="sso.").values_list("action", flat=True)) \
        == {"sso.identity_provider_created", "sso.identity_provider_changed", "sso.identity_provider_deleted"}


@pytest.fixture
def provider(acme):
    tenant, owner, *_ = acme
    response = api_client_for(owner).post(URL, BODY, format="json")
    return IdentityProvider.objects.get(pk=response.json()["id"])


VERBS = [("get", lambda pk: URL, None), ("post", lambda pk: URL, BODY), ("get", url, None),
         ("patch", url, {"enforce_sso": True}), ("delete", url, None),
         ("post", lambda pk: f"{url(pk)}/domains/verify", None)]


@pytest.mark.parametrize("role", ["admin", "member"])
@pytest.mark.parametrize("method, path, body", VERBS, ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(VERBS)])
def test_a_member_without_the_owner_role_is_refused(acme, provider, role, method, path, body):
    tenant, owner, admin, member = acme
    api = api_client_for(admin if role == "admin" else member)
    response = getattr(api, method)(path(provider.pk), body, format="json")
    assert response.status_code == 403 and response.json()["code"] in ("permission_denied", "forbidden")
    provider.refresh_from_db()
    assert provider.enforce_sso is False and IdentityProvider.objects.count() == 1


@pytest.mark.parametrize("method, path, body", VERBS[2:], ids=[m for m, _, _ in VERBS[2:]])
def test_another_tenants_owner_gets_not_found(acme, provider, method, path, body):
    other = MembershipFactory(role="owner", tenant=TenantFactory(plan=Plan.objects.get(slug="enterprise")))
    response = getattr(api_client_for(other), method)(path(provider.pk), body, format="json")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert api_client_for(other).get(URL).json() == []
    provider.refresh_from_db()
    assert provider.enforce_sso is False


def test_a_plan_without_sso_is_refused(db):
    owner = MembershipFactory(role="owner", tenant=TenantFactory(plan=Plan.objects.get(slug="pro")))
    response = api_client_for(owner).post(URL, BODY, format="json")
    assert response.status_code == 403 and response.json()["code"] == "plan_without_sso"
    assert "does not include single sign-on" in response.json()["detail"]


@pytest.mark.parametrize("change, field", [
    ({"client_secret": None}, "client_secret"),
    ({"issuer": "ftp://nowhere"}, "issuer"),
    ({"scopes": "email profile"}, "scopes"),
    ({"default_role": "owner"}, "default_role"),
    ({"group_roles": {"admins": "owner"}}, "group_roles"),
    ({"domains": ["not a domain"]}, "domains"),
    ({"claim_mapping": {"shoe_size": "x"}}, "claim_mapping"),
    ({"metadata_xml": "<x/>"}, "metadata_xml"),
    ({"surprise": 1}, "surprise"),
], ids=["no-secret", "bad-issuer", "no-openid", "owner-role", "owner-group", "bad-domain", "unknown-claim",
        "saml-field-on-oidc", "unknown-field"])
def test_bad_input_is_a_clear_400(acme, change, field):
    tenant, owner, *_ = acme
    body = {**BODY, **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = api_client_for(owner).post(URL, body, format="json")
    assert response.status_code == 400, response.json()
    assert field in str(response.json()) and response.json()["detail"]


def test_saml_fields_are_stored(acme):
    tenant, owner, *_ = acme
    response = api_client_for(owner).post(URL, {"kind": "saml", "metadata_url": "https://idp.acme.test/metadata",
                                                "entity_id": "https://idp.acme.test", "domains": ["acme.test"]},
                                          format="json")
    assert response.status_code == 201 and response.json()["metadata_url"] == "https://idp.acme.test/metadata"


def test_a_domain_verified_by_another_tenant_cannot_be_listed(acme, provider):
    from sso import services

    services.domain_verify_by_staff(domain="ACME.test", actor="test")
    other = MembershipFactory(role="owner", tenant=TenantFactory(plan=Plan.objects.get(slug="enterprise")))
    response = api_client_for(other).post(URL, {**BODY, "domains": ["acme.TEST"]}, format="json")
    assert response.status_code == 409 and response.json()["code"] == "domain_taken"
