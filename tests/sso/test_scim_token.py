"""GET/POST/DELETE /api/v1/identity-providers/{id}/scim-token: owners make, rotate and revoke the SCIM token (shown
once, stored hashed, audited in the same transaction); admins and members get 403, another tenant 404, a plan without
SSO 403; staff make one in admin."""
import pytest
from django.contrib.auth import get_user_model

from core.tokens import hash_secret
from sso.models import ScimToken
from tenants.models import AuditLog, Plan
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import ScimClient, scim_provider_for

pytestmark = pytest.mark.django_db


def url(provider):
    return f"/api/v1/identity-providers/{provider.pk}/scim-token"


@pytest.fixture
def provider(acme):
    provider, _ = scim_provider_for(acme[0])
    ScimToken.objects.all().delete()  # each test makes its own
    AuditLog.objects.filter(action__startswith="scim_token.").delete()
    return provider


def test_an_owner_makes_rotates_and_revokes_the_token(acme, provider):
    tenant, owner, *_ = acme
    api = api_client_for(owner)
    assert api.get(url(provider)).status_code == 404

    response = api.post(url(provider))
    assert response.status_code == 201, response.json()
    first = response.json()
    assert first["token"].startswith(f"hsc_{first['prefix']}_") and first["rotated"] is False
    assert first["scim_base_url"] == "http://testserver/scim/v2"
    stored = ScimToken.objects.get(identity_provider=provider)
    assert stored.token_hash == hash_secret(first["token"]) and first["token"] not in str(stored.__dict__)
    assert ScimClient(first["token"]).get("/Users").status_code == 200
    shown = api.get(url(provider)).json()
    assert shown["prefix"] == first["prefix"] and "token" not in shown and shown["last_used_at"]

    second = api.post(url(provider)).json()
    assert second["rotated"] is True and second["token"] != first["token"]
    assert ScimClient(first["token"]).get("/Users").status_code == 401  # the old one, at once
    assert ScimClient(second["token"]).get("/Users").status_code == 200
    assert ScimToken.objects.filter(identity_provider=provider, revoked_at__isnull=True).count() == 1

    assert api.delete(url(provider)).status_code == 204
    response = ScimClient(second["token"]).get("/Users")
    assert response.status_code == 401 and response["WWW-Authenticate"] == 'Bearer realm="scim"'
    assert response.json()["detail"] == "Invalid or revoked SCIM token."
    assert api.delete(url(provider)).status_code == 404
    actions = list(AuditLog.objects.filter(tenant=tenant, action__startswith="scim_token.").order_by("pk")
                   .values_list("action", "actor_label", "data"))
    assert [a for a, _, _ in actions] == ["scim_token.created", "scim_token.revoked", "scim_token.created",
                                          "scim_token.revoked"]
    assert all(label == owner.user.email for _, label, _ in actions)
    assert actions[2][2]["rotates"] == first["prefix"]


VERBS = ["get", "post", "delete"]


@pytest.mark.parametrize("role", ["admin", "member"])
@pytest.mark.parametrize("method", VERBS)
def test_admins_and_members_are_refused(acme, provider, role, method):
    tenant, owner, admin, member = acme
    scim_token = api_client_for(owner).post(url(provider)).json()["token"]
    response = getattr(api_client_for(admin if role == "admin" else member), method)(url(provider))
    assert response.status_code == 403 and response.json()["code"] in ("permission_denied", "forbidden")
    assert ScimToken.objects.get(revoked_at__isnull=True).token_hash == hash_secret(scim_token)


@pytest.mark.parametrize("method", VERBS)
def test_another_tenants_owner_gets_not_found(acme, provider, method):
    tenant, owner, *_ = acme
    scim_token = api_client_for(owner).post(url(provider)).json()["token"]
    other = MembershipFactory(role="owner", tenant=TenantFactory(plan=Plan.objects.get(slug="enterprise")))
    response = getattr(api_client_for(other), method)(url(provider))
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert ScimToken.objects.get(revoked_at__isnull=True).token_hash == hash_secret(scim_token)


def test_a_plan_without_sso_has_no_scim(acme, provider):
    tenant, owner, *_ = acme
    scim_token = api_client_for(owner).post(url(provider)).json()["token"]
    tenant.plan = Plan.objects.get(slug="pro")
    tenant.save(update_fields=["plan"])
    response = api_client_for(owner).post(url(provider))
    assert response.status_code == 403 and response.json()["code"] == "plan_without_sso"
    # The live token stops working too, with a SCIM error saying why.
    response = ScimClient(scim_token).get("/Users")
    assert response.status_code == 403 and "single sign-on" in response.json()["detail"]
    assert response.json()["schemas"] == ["urn:ietf:params:scim:api:messages:2.0:Error"]


def test_staff_make_one_in_admin_and_revoke_it(acme, provider, client):
    staff = get_user_model().objects.create_superuser(email="staff@hearth.test", password="x")
    client.force_login(staff)
    response = client.post("/admin/sso/identityprovider/", {"action": "scim_token_issue",
                                                            "_selected_action": [provider.pk]}, follow=True)
    shown = [str(m) for m in response.context["messages"]]
    token = next(m.split("SCIM token ")[1].split(" ")[0] for m in shown if "SCIM token hsc_" in m)
    assert ScimClient(token).get("/Users").status_code == 200
    live = ScimToken.objects.get(revoked_at__isnull=True)
    client.post("/admin/sso/scimtoken/", {"action": "revoke", "_selected_action": [live.pk]}, follow=True)
    assert ScimClient(token).get("/Users").status_code == 401
    assert list(AuditLog.objects.filter(action__startswith="scim_token.").order_by("pk")
                .values_list("action", "actor_label")) == [("scim_token.created", staff.email),
                                                           ("scim_token.revoked", staff.email)]
