"""/scim/v2/Users and discovery through Django's test client: create, get, list with filter and paging, PUT and
PATCH (active false removes the membership, its API tokens and its portal sessions; true brings it back within the
seats), DELETE; every answer in application/scim+json, every error in SCIM's error schema."""
import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse

from sso.models import ScimUser
from tenants import portal
from tenants.models import AuditLog, Membership, Plan, User
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import SCIM_JSON, scim_patch, scim_user_body

pytestmark = pytest.mark.django_db
ERROR = "urn:ietf:params:scim:api:messages:2.0:Error"


def _error(response, status, scim_type=None):
    assert response.status_code == status, response.content
    assert response["Content-Type"] == SCIM_JSON
    body = response.json()
    assert body["schemas"] == [ERROR] and body["status"] == str(status) and body["detail"]
    assert body.get("scimType") == scim_type
    return body


def test_create_get_list_filter_and_page(acme, acme_scim):
    tenant = acme[0]
    provider, scim = acme_scim
    response = scim.post("/Users", scim_user_body("Grace@Acme.test"))
    assert response.status_code == 201, response.content
    assert response["Content-Type"] == SCIM_JSON
    created = response.json()
    assert created["userName"] == "grace@acme.test" and created["active"] is True
    assert created["name"]["givenName"] == "Grace" and created["externalId"] == "ext-Grace@Acme.test"
    assert response["Location"] == f"http://testserver/scim/v2/Users/{created['id']}" == created["meta"]["location"]
    user = User.objects.get(email="grace@acme.test")
    assert not user.has_usable_password() and user.first_name == "Grace"
    assert Membership.objects.get(tenant=tenant, user=user).role == "member"  # the provider's default role
    assert scim.get(f"/Users/{created['id']}").json() == created

    for n in range(3):
        scim.post("/Users", scim_user_body(f"user{n}@acme.test"))
    listing = scim.get("/Users").json()
    assert listing["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:ListResponse"]
    assert listing["totalResults"] == 4 and len(listing["Resources"]) == 4
    found = scim.get('/Users?filter=userName eq "GRACE@acme.test"').json()
    assert found["totalResults"] == 1 and found["Resources"][0]["id"] == created["id"]
    assert scim.get('/Users?filter=userName eq "nobody@acme.test"').json()["totalResults"] == 0
    assert scim.get('/Users?filter=externalId eq "ext-user1@acme.test"').json()["Resources"][0]["userName"] == \
        "user1@acme.test"
    page = scim.get("/Users?startIndex=2&count=2").json()
    assert (page["totalResults"], page["startIndex"], page["itemsPerPage"]) == (4, 2, 2)
    assert [r["userName"] for r in page["Resources"]] == ["user0@acme.test", "user1@acme.test"]
    assert scim.get("/Users?count=0").json()["Resources"] == []
    assert AuditLog.objects.filter(tenant=tenant, action="scim.user_provisioned").count() == 4
    assert AuditLog.objects.filter(tenant=tenant, action="member.joined").count() == 4


def test_an_existing_member_is_linked_and_a_duplicate_is_refused(acme, acme_scim):
    tenant, owner, admin, member = acme
    provider, scim = acme_scim
    response = scim.post("/Users", scim_user_body("member@acme.test"))
    assert response.status_code == 201
    assert Membership.objects.get(pk=member.pk).role == "member"
    _error(scim.post("/Users", scim_user_body("MEMBER@acme.test")), 409, "uniqueness")
    # Provisioned inactive, an existing member loses the membership: the directory's word is what counts.
    response = scim.post("/Users", scim_user_body("admin@acme.test", active=False))
    assert response.status_code == 201 and response.json()["active"] is False
    assert not Membership.objects.filter(pk=admin.pk).exists()


def test_the_seat_limit_is_a_409(acme, acme_scim):
    tenant = acme[0]
    provider, scim = acme_scim
    tenant.plan = Plan.objects.get(slug="team")
    tenant.save(update_fields=["plan"])
    seats = tenant.plan.seats
    for n in range(seats - tenant.memberships.count()):
        assert scim.post("/Users", scim_user_body(f"u{n}@acme.test")).status_code == 201
    body = _error(scim.post("/Users", scim_user_body("onetoomany@acme.test")), 409)
    assert "no free seat" in body["detail"]
    assert not ScimUser.objects.filter(user_name="onetoomany@acme.test").exists()


def test_deactivation_removes_the_membership_tokens_and_portal_sessions_and_keeps_other_tenants(acme, acme_scim):
    tenant = acme[0]
    provider, scim = acme_scim
    scim_id = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    user = User.objects.get(email="grace@acme.test")
    membership = Membership.objects.get(tenant=tenant, user=user)
    elsewhere = MembershipFactory(user=user, tenant=TenantFactory(plan=Plan.objects.get(slug="enterprise")))
    api, api_elsewhere = api_client_for(membership), api_client_for(elsewhere)
    browser = Client()
    browser.force_login(user)
    session = browser.session
    session[portal.SSO_LOGIN_SESSION_KEY] = {"tenant": tenant.pk, "at": "2026-12-03T10:00:00+00:00"}
    session.save()
    assert api.get("/api/v1/tenant").status_code == 200
    assert browser.get(reverse("portal:dashboard")).context["tenant"] == tenant

    response = scim.patch(f"/Users/{scim_id}", scim_patch({"op": "replace", "value": {"active": False}}))
    assert response.status_code == 200, response.content
    assert response.json()["active"] is False
    assert not Membership.objects.filter(tenant=tenant, user=user).exists()
    assert api.get("/api/v1/tenant").status_code == 401
    key = browser.session.session_key
    # Signed out: it signed in through this tenant's IdP.
    assert browser.get(reverse("portal:dashboard")).status_code == 302
    assert not Session.objects.filter(session_key=key).exists()
    assert Membership.objects.filter(pk=elsewhere.pk).exists() and api_elsewhere.get("/api/v1/tenant").status_code \
        == 200
    assert scim.get(f"/Users/{scim_id}").json()["active"] is False  # the directory's record stays
    removed = AuditLog.objects.get(tenant=tenant, action="member.removed")
    assert removed.actor_label == f"scim:idp:{provider.pk}" and removed.data["api_tokens_revoked"] == 1
    assert AuditLog.objects.filter(tenant=tenant, action="scim.user_deactivated").count() == 1

    # Back again (Entra ID's string boolean, with a path), within the seats.
    response = scim.patch(f"/Users/{scim_id}", scim_patch({"op": "Replace", "path": "active", "value": "True"}))
    assert response.json()["active"] is True
    assert Membership.objects.get(tenant=tenant, user=user).role == "member"


def test_put_and_patch_change_the_profile(acme, acme_scim):
    provider, scim = acme_scim
    scim_id = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    body = scim_user_body("grace@acme.test", name={"givenName": "Amazing", "familyName": "Grace"},
                          externalId="00u1", title="Rear admiral")
    response = scim.put(f"/Users/{scim_id}", body)
    assert response.status_code == 200 and response.json()["name"]["familyName"] == "Grace"
    assert response.json()["externalId"] == "00u1"
    response = scim.patch(f"/Users/{scim_id}", scim_patch(
        {"op": "replace", "path": "name.givenName", "value": "Admiral"},
        {"op": "add", "path": "displayName", "value": "ignored"},
        {"op": "remove", "path": "externalId"}))
    assert response.status_code == 200, response.content
    assert response.json()["name"]["givenName"] == "Admiral" and "externalId" not in response.json()
    _error(scim.put(f"/Users/{scim_id}", scim_user_body("other@acme.test")), 400, "mutability")


def test_delete_removes_the_member_and_the_record(acme, acme_scim):
    tenant = acme[0]
    provider, scim = acme_scim
    scim_id = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    response = scim.delete(f"/Users/{scim_id}")
    assert response.status_code == 204 and response.content == b""
    assert not Membership.objects.filter(tenant=tenant, user__email="grace@acme.test").exists()
    assert User.objects.filter(email="grace@acme.test").exists()  # the account may belong to other tenants
    _error(scim.get(f"/Users/{scim_id}"), 404)
    _error(scim.delete(f"/Users/{scim_id}"), 404)


def test_the_last_owner_is_not_removed(acme, acme_scim):
    provider, scim = acme_scim
    scim_id = scim.post("/Users", scim_user_body("owner@acme.test")).json()["id"]
    body = _error(scim.patch(f"/Users/{scim_id}", scim_patch({"op": "replace", "path": "active", "value": False})),
                  409)
    assert "last owner" in body["detail"]
    assert Membership.objects.filter(tenant=acme[0], user__email="owner@acme.test", role="owner").exists()


@pytest.mark.parametrize("request_, status, scim_type", [
    (("get", '/Users?filter=userName co "acme"', None), 400, "invalidFilter"),
    (("get", '/Users?filter=title eq "x"', None), 400, "invalidFilter"),
    (("get", "/Users?filter=userName eq grace", None), 400, "invalidFilter"),
    (("get", "/Users?startIndex=one", None), 400, "invalidValue"),
    (("post", "/Users", "{not json"), 400, "invalidSyntax"),
    (("post", "/Users", "[]"), 400, "invalidSyntax"),
    (("post", "/Users", {"userName": "not-an-address"}), 400, "invalidValue"),
    (("post", "/Users", {"userName": "eve@evil.test"}), 400, "invalidValue"),
    (("post", "/Users", {"userName": "x@acme.test", "shoeSize": 44}), 400, "invalidPath"),
    (("post", "/Users", {"userName": "x@acme.test", "active": "maybe"}), 400, "invalidValue"),
    (("post", "/Users", {"name": {"givenName": "No"}}), 400, "invalidValue"),
    (("patch", "/Users/{id}", {"Operations": [{"op": "replace", "path": "active", "value": False}]}), 400,
     "invalidSyntax"),
    (("patch", "/Users/{id}", scim_patch({"op": "frobnicate", "path": "active", "value": False})), 400,
     "invalidSyntax"),
    (("patch", "/Users/{id}", scim_patch({"op": "replace", "path": "shoeSize", "value": 44})), 400, "invalidPath"),
    (("patch", "/Users/{id}", scim_patch({"op": "remove", "path": "userName"})), 400, "mutability"),
    (("patch", "/Users/{id}", scim_patch({"op": "replace", "value": False})), 400, "invalidSyntax"),
    (("get", "/Users/not-a-uuid", None), 404, None),
    (("get", "/Users/3f2504e0-4f89-11d3-9a0c-0305e82c3301", None), 404, None),
    (("get", "/Nothing", None), 404, None),
    (("post", "/ServiceProviderConfig", {}), 405, None),
], ids=lambda v: v if isinstance(v, str) else None)
def test_bad_input_gets_a_scim_error(acme, acme_scim, request_, status, scim_type):
    provider, scim = acme_scim
    scim_id = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    method, path, body = request_
    path = path.replace("{id}", scim_id)
    kwargs = {"raw": body} if isinstance(body, str) else {"body": body}
    _error(getattr(scim, method)(path, **kwargs), status, scim_type)
    assert ScimUser.objects.get().active is True and ScimUser.objects.count() == 1


def test_discovery(acme_scim):
    provider, scim = acme_scim
    config = scim.get("/ServiceProviderConfig").json()
    assert config["patch"]["supported"] is True and config["bulk"]["supported"] is False
    assert config["filter"] == {"supported": True, "maxResults": 200}
    types = scim.get("/ResourceTypes").json()
    assert {t["id"]: t["endpoint"] for t in types["Resources"]} == {"User": "/Users", "Group": "/Groups"}
    schemas = scim.get("/Schemas").json()["Resources"]
    assert {s["id"] for s in schemas} == {"urn:ietf:params:scim:schemas:core:2.0:User",
                                         "urn:ietf:params:scim:schemas:core:2.0:Group"}
    user_schema = scim.get("/Schemas/urn:ietf:params:scim:schemas:core:2.0:User").json()
    assert "userName" in [a["name"] for a in user_schema["attributes"]]
    assert scim.get("/ResourceTypes/User").json()["schema"] == "urn:ietf:params:scim:schemas:core:2.0:User"
    # A plain application/json request is answered too, still as application/scim+json.
    response = scim.post("/Users", scim_user_body("json@acme.test"), content_type="application/json")
    assert response.status_code == 201 and response["Content-Type"] == SCIM_JSON


def test_a_sign_in_does_not_bring_back_a_member_the_directory_deactivated(acme, acme_scim):
    from sso.provisioning import sso_login_provision
    from tenants.exceptions import Forbidden

    tenant = acme[0]
    provider, scim = acme_scim
    claims = {"email": "grace@acme.test", "email_verified": True}
    scim_id = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    scim.patch(f"/Users/{scim_id}", scim_patch({"op": "replace", "path": "active", "value": False}))
    with pytest.raises(Forbidden) as refused:
        sso_login_provision(identity_provider=provider, subject="grace", claims=claims)
    assert refused.value.code == "scim_deactivated"
    assert not Membership.objects.filter(tenant=tenant, user__email="grace@acme.test").exists()
    scim.patch(f"/Users/{scim_id}", scim_patch({"op": "replace", "path": "active", "value": True}))
    assert sso_login_provision(identity_provider=provider, subject="grace", claims=claims).tenant == tenant
