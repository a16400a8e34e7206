"""A SCIM token acts only in its own tenant: another tenant's token gets 404 on every resource of this one and sees
nothing in its lists; a revoked, unknown or missing token gets 401 on every endpoint and verb; nothing changes."""
import pytest

from sso.models import ScimGroup, ScimUser
from tenants.models import Membership, Plan
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import ScimClient, scim_patch, scim_provider_for, scim_user_body

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme_resources(acme, acme_scim):
    provider, scim = acme_scim
    user = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    group = scim.post("/Groups", {"displayName": "platform-admins", "members": [{"value": user}]}).json()["id"]
    return user, group


@pytest.fixture
def globex_scim(db):
    tenant = TenantFactory(name="Globex", slug="globex", plan=Plan.objects.get(slug="enterprise"))
    MembershipFactory(tenant=tenant, role="owner", user__email="owner@globex.test")
    provider, token = scim_provider_for(tenant, domains=("globex.test",))
    return ScimClient(token)


def _every_call(user, group):
    deactivate = scim_patch({"op": "replace", "path": "active", "value": False})
    return [
        ("get", f"/Users/{user}", None), ("put", f"/Users/{user}", scim_user_body("grace@acme.test", active=False)),
        ("patch", f"/Users/{user}", deactivate), ("delete", f"/Users/{user}", None),
        ("get", f"/Groups/{group}", None), ("put", f"/Groups/{group}", {"displayName": "x", "members": []}),
        ("patch", f"/Groups/{group}", scim_patch({"op": "replace", "path": "members", "value": []})),
        ("delete", f"/Groups/{group}", None),
    ]


def _unchanged(acme):
    assert ScimUser.objects.get(user_name="grace@acme.test").active is True
    assert Membership.objects.get(tenant=acme[0], user__email="grace@acme.test").role == "admin"
    assert ScimGroup.objects.get(display_name="platform-admins").members.count() == 1


def test_another_tenants_token_finds_nothing_of_this_tenant(acme, acme_resources, globex_scim):
    user, group = acme_resources
    for method, path, body in _every_call(user, group):
        response = getattr(globex_scim, method)(path, body)
        assert response.status_code == 404, (method, path, response.content)
        assert response.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]
    assert globex_scim.get("/Users").json()["totalResults"] == 0
    assert globex_scim.get('/Users?filter=userName eq "grace@acme.test"').json()["Resources"] == []
    assert globex_scim.get(f'/Users?filter=id eq "{user}"').json()["totalResults"] == 0
    assert globex_scim.get("/Groups").json()["totalResults"] == 0
    # Acme's user cannot be put into Globex's groups, nor Acme's address provisioned into Globex.
    response = globex_scim.post("/Groups", {"displayName": "platform-admins", "members": [{"value": user}]})
    assert response.status_code == 400 and response.json()["scimType"] == "invalidValue"
    response = globex_scim.post("/Users", scim_user_body("grace@acme.test"))
    assert response.status_code == 400 and "verified domains" in response.json()["detail"]
    _unchanged(acme)


@pytest.mark.parametrize("token", ["revoked", "unknown", "missing", "api-token"])
def test_a_revoked_unknown_or_missing_token_gets_401_everywhere(acme, acme_scim, acme_resources, token):
    from sso import scim as scim_services
    from tests.conftest import api_client_for

    provider, scim = acme_scim
    user, group = acme_resources
    if token == "revoked":
        scim_services.scim_token_revoke(identity_provider=provider, actor=acme[1].user)
        client = scim
    elif token == "unknown":
        client = ScimClient("hsc_00000000_" + "x" * 43)
    elif token == "missing":
        client = ScimClient(None)
    else:  # an owner's personal API token is not a SCIM token
        client = ScimClient(api_client_for(acme[1])._credentials["HTTP_AUTHORIZATION"].split()[1])
    calls = [("get", "/Users", None), ("post", "/Users", scim_user_body("new@acme.test")),
             ("get", "/Groups", None), ("post", "/Groups", {"displayName": "g"}),
             ("get", "/ServiceProviderConfig", None), ("get", "/ResourceTypes", None), ("get", "/Schemas", None),
             *_every_call(user, group)]
    for method, path, body in calls:
        response = getattr(client, method)(path, body)
        assert response.status_code == 401, (method, path, response.content)
        assert response["WWW-Authenticate"] == 'Bearer realm="scim"'
        assert response.json()["status"] == "401"
    _unchanged(acme)
    assert not ScimUser.objects.filter(user_name="new@acme.test").exists()
