"""/scim/v2/Groups: a group's displayName maps to a role through the identity provider's group_roles, so adding a
member to a mapped group (or renaming or deleting the group) changes their role at once; owners keep theirs."""
import pytest

from sso.models import ScimGroup
from tenants.models import AuditLog, Membership
from tests.sso.conftest import scim_patch, scim_user_body

pytestmark = pytest.mark.django_db
GROUP = "urn:ietf:params:scim:schemas:core:2.0:Group"


def _role(tenant, email):
    return Membership.objects.get(tenant=tenant, user__email=email).role


def test_group_membership_maps_to_roles(acme, acme_scim):
    tenant = acme[0]
    provider, scim = acme_scim
    grace = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    alan = scim.post("/Users", scim_user_body("alan@acme.test")).json()["id"]
    owner = scim.post("/Users", scim_user_body("owner@acme.test")).json()["id"]
    assert _role(tenant, "grace@acme.test") == "member"

    response = scim.post("/Groups", {"schemas": [GROUP], "displayName": "platform-admins", "externalId": "g1",
                                     "members": [{"value": grace}, {"value": owner}]})
    assert response.status_code == 201, response.content
    group = response.json()
    assert {m["value"] for m in group["members"]} == {grace, owner} and group["externalId"] == "g1"
    assert _role(tenant, "grace@acme.test") == "admin" and _role(tenant, "owner@acme.test") == "owner"
    assert scim.get(f"/Users/{grace}").json()["groups"][0]["display"] == "platform-admins"

    # Okta's and Entra ID's shapes: add with a path, remove with a value filter.
    response = scim.patch(f"/Groups/{group['id']}", scim_patch(
        {"op": "add", "path": "members", "value": [{"value": alan}]},
        {"op": "remove", "path": f'members[value eq "{grace}"]'}))
    assert response.status_code == 200, response.content
    assert {m["value"] for m in response.json()["members"]} == {alan, owner}
    assert _role(tenant, "alan@acme.test") == "admin" and _role(tenant, "grace@acme.test") == "member"

    # Renamed to a name no role maps to: its members fall back to the default role.
    response = scim.patch(f"/Groups/{group['id']}", scim_patch(
        {"op": "replace", "value": {"displayName": "everyone"}}))
    assert response.json()["displayName"] == "everyone" and _role(tenant, "alan@acme.test") == "member"
    scim.patch(f"/Groups/{group['id']}", scim_patch({"op": "replace", "path": "displayName",
                                                      "value": "platform-admins"}))
    assert _role(tenant, "alan@acme.test") == "admin"

    listing = scim.get('/Groups?filter=displayName eq "Platform-Admins"&excludedAttributes=members').json()
    assert listing["totalResults"] == 1 and "members" not in listing["Resources"][0]
    assert scim.get(f"/Groups/{group['id']}").json()["displayName"] == "platform-admins"

    assert scim.delete(f"/Groups/{group['id']}").status_code == 204
    assert _role(tenant, "alan@acme.test") == "member" and not ScimGroup.objects.exists()
    actions = set(AuditLog.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert {"scim.group_created", "scim.group_changed", "scim.group_deleted", "member.role_changed"} <= actions


def test_put_replaces_the_members_and_bad_group_input_is_a_scim_error(acme, acme_scim):
    tenant = acme[0]
    provider, scim = acme_scim
    grace = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    gid = scim.post("/Groups", {"displayName": "platform-admins", "members": [{"value": grace}]}).json()["id"]
    response = scim.put(f"/Groups/{gid}", {"schemas": [GROUP], "displayName": "platform-admins", "members": []})
    assert response.status_code == 200 and response.json()["members"] == []
    assert _role(tenant, "grace@acme.test") == "member"

    def error(response, status, scim_type):
        assert response.status_code == status, response.content
        assert response.json().get("scimType") == scim_type

    error(scim.post("/Groups", {"displayName": "PLATFORM-admins"}), 409, "uniqueness")
    error(scim.post("/Groups", {"displayName": ""}), 400, "invalidValue")
    error(scim.post("/Groups", {"displayName": "x", "members": [{"value": "not-a-user"}]}), 400, "invalidValue")
    error(scim.post("/Groups", {"displayName": "x", "colour": "blue"}), 400, "invalidPath")
    error(scim.patch(f"/Groups/{gid}", scim_patch({"op": "replace", "path": "colour", "value": "blue"})), 400,
          "invalidPath")
    error(scim.patch(f"/Groups/{gid}", scim_patch({"op": "add", "path": "members", "value": "grace"})), 400,
          "invalidValue")
    assert ScimGroup.objects.count() == 1


def test_entra_ids_group_patches(acme, acme_scim):
    """Entra ID adds members in a value object without a path and removes them with a value list."""
    tenant = acme[0]
    provider, scim = acme_scim
    grace = scim.post("/Users", scim_user_body("grace@acme.test")).json()["id"]
    alan = scim.post("/Users", scim_user_body("alan@acme.test")).json()["id"]
    gid = scim.post("/Groups", {"displayName": "platform-admins"}).json()["id"]
    response = scim.patch(f"/Groups/{gid}", scim_patch(
        {"op": "Add", "value": {"members": [{"value": grace}, {"value": alan}]}}))
    assert response.status_code == 200 and len(response.json()["members"]) == 2
    assert _role(tenant, "alan@acme.test") == "admin"
    response = scim.patch(f"/Groups/{gid}", scim_patch(
        {"op": "Remove", "path": "members", "value": [{"value": alan}]}))
    assert [m["value"] for m in response.json()["members"]] == [grace]
    assert _role(tenant, "alan@acme.test") == "member" and _role(tenant, "grace@acme.test") == "admin"
    response = scim.patch(f"/Groups/{gid}", scim_patch({"op": "remove", "path": "members"}))
    assert response.json()["members"] == [] and _role(tenant, "grace@acme.test") == "member"
