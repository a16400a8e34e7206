"""tenants.api: every endpoint and verb, from the right member, another tenant, a member without the role, no one."""
import io
import json
import re
from datetime import timedelta

import pytest
import yaml
from django.core.management import call_command
from django.utils import timezone
from drf_spectacular.validation import validate_schema
from rest_framework.test import APIClient

from tenants import services
from tenants.models import ApiToken, AuditLog, Invitation, Membership, Tenant
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db

API = "/api/v1"


@pytest.fixture
def acme():
    """A team-plan tenant (3 seats) with an owner, an admin and a member, each with an API client."""
    tenant = TenantFactory(name="Acme", slug="acme")
    people = {role: MembershipFactory(tenant=tenant, role=role, user=UserFactory(email=f"{role}@acme.test"))
              for role in ("owner", "admin", "member")}
    return tenant, people, {role: api_client_for(m) for role, m in people.items()}


@pytest.fixture
def globex():
    """Another tenant with its own owner, member and a pending invitation: nothing of it may leak to Acme."""
    tenant = TenantFactory(name="Globex", slug="globex")
    owner = MembershipFactory(tenant=tenant, role="owner", user=UserFactory(email="owner@globex.test"))
    member = MembershipFactory(tenant=tenant, role="member", user=UserFactory(email="member@globex.test"))
    invitation, _ = services.member_invite(tenant=tenant, email="secret-hire@globex.test", actor=owner.user)
    token, _ = services.api_token_create(membership=owner, name="globex-ci", actor=owner.user)
    return tenant, {"owner": owner, "member": member, "invitation": invitation, "token": token,
                    "client": api_client_for(owner)}


def no_globex_in(response):
    body = json.dumps(response.json()) if response.content else ""
    return "globex" not in body.lower() and "secret-hire" not in body


def send(client, method, url, data=None):
    if method == "get":
        return client.get(url)
    body = json.dumps(data) if data is not None else ""
    return client.generic(method.upper(), url, body, content_type="application/json")


# --- authentication ------------------------------------------------------------------------------

EVERY_ENDPOINT = [
    ("get", "/tenant"), ("patch", "/tenant"), ("post", "/tenant/plan"), ("get", "/plans"),
    ("get", "/members"), ("post", "/members"), ("get", "/members/1"), ("patch", "/members/1"),
    ("delete", "/members/1"), ("get", "/invitations"), ("delete", "/invitations/1"),
    ("post", "/invitations/accept"), ("get", "/tokens"), ("post", "/tokens"), ("delete", "/tokens/1"),
]


@pytest.mark.parametrize("method,path", EVERY_ENDPOINT)
def test_no_token_is_401(method, path):
    response = send(APIClient(), method, API + path, {})
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["code"] == "not_authenticated"


@pytest.mark.parametrize("header", ["Bearer hth_nope_nope", "Bearer", "Bearer a b", "Token abc", "Bearer not-ours"])
def test_bad_tokens_are_401(header, acme):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(f"{API}/tenant")
    assert response.status_code == 401
    assert response.json()["detail"]


def test_revoked_token_is_401(acme):
    _, people, _ = acme
    token, plaintext = services.api_token_create(membership=people["admin"], name="x", actor=people["admin"].user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    assert client.get(f"{API}/tenant").status_code == 200
    services.api_token_revoke(token=token, actor=people["admin"].user)
    response = client.get(f"{API}/tenant")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_token_of_an_offboarded_or_removed_member_stops_working(acme):
    tenant, people, clients = acme
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    assert clients["member"].get(f"{API}/tenant").status_code == 401  # the token went with the membership


def test_unknown_method_is_405(acme):
    _, _, clients = acme
    response = clients["owner"].put(f"{API}/tenant", {"name": "x"}, format="json")
    assert response.status_code == 405
    assert "PUT" in response.json()["detail"]
    assert response["Allow"] == "GET, PATCH, HEAD, OPTIONS"
    assert clients["owner"].get(f"{API}/members")["Allow"] == "GET, POST, HEAD, OPTIONS"
    assert clients["owner"].options(f"{API}/members/1").status_code == 200


# --- tenant --------------------------------------------------------------------------------------


def test_get_tenant(acme):
    _, _, clients = acme
    response = clients["member"].get(f"{API}/tenant")
    assert response.status_code == 200
    body = response.json()
    assert body["slug"] == "acme" and body["name"] == "Acme" and body["status"] == "active"
    assert body["plan"]["slug"] == "team"
    assert body["plan"]["seats"] == 3 and body["plan"]["monthly_hours"] == 100 and body["plan"]["storage_mb"] == 10240
    assert body["plan"]["monthly_price_cents"] == 2500 and body["plan"]["currency"] == "usd"


def test_a_user_in_two_tenants_has_a_token_for_each_and_each_sees_only_its_tenant(acme, globex):
    acme_tenant, people, _ = acme
    globex_tenant, _ = globex
    both = people["member"].user
    in_globex = MembershipFactory(tenant=globex_tenant, user=both, role="admin")
    as_acme, as_globex = api_client_for(people["member"]), api_client_for(in_globex)
    assert as_acme.get(f"{API}/tenant").json()["slug"] == "acme"
    assert as_globex.get(f"{API}/tenant").json()["slug"] == "globex"
    acme_emails = {m["email"] for m in as_acme.get(f"{API}/members").json()}
    globex_emails = {m["email"] for m in as_globex.get(f"{API}/members").json()}
    assert "owner@globex.test" in globex_emails and "owner@globex.test" not in acme_emails
    assert "owner@acme.test" in acme_emails and "owner@acme.test" not in globex_emails
    # Each token lists only the tokens of its own membership.
    assert {t["id"] for t in as_acme.get(f"{API}/tokens").json()} == set(
        ApiToken.objects.filter(membership=people["member"]).values_list("pk", flat=True))
    assert {t["id"] for t in as_globex.get(f"{API}/tokens").json()} == set(
        ApiToken.objects.filter(membership=in_globex).values_list("pk", flat=True))
    # Admin in Globex, plain member in Acme: the role follows the token's tenant.
    assert send(as_acme, "patch", f"{API}/tenant", {"name": "Nope"}).status_code == 403
    assert send(as_globex, "patch", f"{API}/tenant", {"name": "Globex Two"}).status_code == 200
    assert Tenant.objects.get(pk=acme_tenant.pk).name == "Acme"


@pytest.mark.parametrize("role", ["owner", "admin"])
def test_patch_tenant_renames_and_audits(acme, role):
    tenant, _, clients = acme
    response = send(clients[role], "patch", f"{API}/tenant", {"name": "  Acme Rockets  "})
    assert response.status_code == 200, response.json()
    assert response.json()["name"] == "Acme Rockets"
    tenant.refresh_from_db()
    assert tenant.name == "Acme Rockets" and tenant.slug == "acme"
    row = AuditLog.objects.get(tenant=tenant, action="tenant.renamed")
    assert row.data == {"from": "Acme", "to": "Acme Rockets"} and row.actor_label == f"{role}@acme.test"


def test_patch_tenant_as_member_is_403(acme):
    tenant, _, clients = acme
    response = send(clients["member"], "patch", f"{API}/tenant", {"name": "Mine now"})
    assert response.status_code == 403
    assert "owners and admins" in response.json()["detail"]
    tenant.refresh_from_db()
    assert tenant.name == "Acme"


@pytest.mark.parametrize("field,value", [("plan", "enterprise"), ("status", "active"), ("slug", "other"),
                                         ("tenant", "globex"), ("synthetic", True)])
def test_patch_tenant_refuses_fields_it_does_not_change(acme, globex, field, value):
    tenant, _, clients = acme
    before = Tenant.objects.values().get(pk=tenant.pk)
    response = send(clients["owner"], "patch", f"{API}/tenant", {"name": "Renamed", field: value})
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid" and field in body["errors"] and body["detail"]
    assert Tenant.objects.values().get(pk=tenant.pk) == before  # nothing applied, not even the name
    assert Tenant.objects.get(slug="globex").name == "Globex"


def test_patch_tenant_refused_field_messages_say_where_to_go(acme):
    _, _, clients = acme
    detail = send(clients["owner"], "patch", f"{API}/tenant", {"plan": "pro"}).json()["detail"]
    assert "POST /api/v1/tenant/plan" in detail


@pytest.mark.parametrize("body", ['{"name": ', "not json", '{"name": "x",}', "\x00"])
def test_malformed_json_is_400_with_a_message(acme, body):
    tenant, _, clients = acme
    response = clients["owner"].generic("PATCH", f"{API}/tenant", body, content_type="application/json")
    assert response.status_code == 400
    assert response.json()["code"] == "parse_error"
    assert "JSON" in response.json()["detail"]
    tenant.refresh_from_db()
    assert tenant.name == "Acme"


@pytest.mark.parametrize("body", [[], "name", 42, None])
def test_json_that_is_not_an_object_is_400(acme, body):
    _, _, clients = acme
    response = clients["owner"].generic("PATCH", f"{API}/tenant", json.dumps(body), content_type="application/json")
    assert response.status_code == 400
    assert response.json()["detail"]


def test_empty_or_blank_name_is_400(acme):
    _, _, clients = acme
    assert send(clients["owner"], "patch", f"{API}/tenant", {}).status_code == 400
    response = send(clients["owner"], "patch", f"{API}/tenant", {"name": "   "})
    assert response.status_code == 400 and response.json()["detail"]
    assert send(clients["owner"], "patch", f"{API}/tenant", {"name": "x" * 121}).status_code == 400


def test_form_encoded_body_is_415(acme):
    _, _, clients = acme
    response = clients["owner"].patch(f"{API}/tenant", "name=x", content_type="application/x-www-form-urlencoded")
    assert response.status_code == 415


# --- plans ---------------------------------------------------------------------------------------


def test_plans_lists_public_plans_with_allowances(acme):
    _, _, clients = acme
    response = clients["member"].get(f"{API}/plans")
    assert response.status_code == 200
    plans = {p["slug"]: p for p in response.json()}
    assert list(plans) == ["free", "starter", "pro", "team"]  # enterprise is not public
    assert plans["free"]["monthly_price_cents"] == 0 and plans["free"]["daily_minutes"] == 30
    assert plans["free"]["storage_mb"] == 100 and plans["free"]["overage_price_cents_per_hour"] is None
    assert plans["starter"]["monthly_price_cents"] == 500 and plans["starter"]["monthly_hours"] == 5
    assert plans["pro"]["monthly_hours"] == 20 and plans["pro"]["storage_mb"] == 5120
    assert set(plans["team"]) >= {"seats", "max_concurrent_workspaces", "idle_timeout_minutes", "currency"}


def test_change_plan_to_free_without_a_subscription_is_immediate(acme):
    # Paid plans go through Stripe Checkout (tests/billing); Free needs no payment, and nothing pays for this Team.
    tenant, people, clients = acme
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    services.member_remove(membership=people["admin"], actor=people["owner"].user)
    response = send(clients["owner"], "post", f"{API}/tenant/plan", {"plan": "free"})
    assert response.status_code == 200, response.json()
    assert response.json()["plan"]["slug"] == "free" and response.json()["outcome"] == "changed"
    tenant.refresh_from_db()
    assert tenant.plan.slug == "free"
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.plan_changed", data__to="free").count() == 1


@pytest.mark.parametrize("role", ["admin", "member"])
def test_change_plan_needs_an_owner(acme, role):
    tenant, _, clients = acme
    response = send(clients[role], "post", f"{API}/tenant/plan", {"plan": "free"})
    assert response.status_code == 403
    assert "owners" in response.json()["detail"]
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team"


def test_change_plan_unknown_plan_is_400(acme):
    _, _, clients = acme
    response = send(clients["owner"], "post", f"{API}/tenant/plan", {"plan": "gold"})
    assert response.status_code == 400
    assert response.json()["code"] == "unknown_plan" and "gold" in response.json()["detail"]
    assert response.json()["field"] == "plan"


def test_change_plan_to_a_non_public_plan_is_400(acme):
    tenant, _, clients = acme
    response = send(clients["owner"], "post", f"{API}/tenant/plan", {"plan": "enterprise"})
    assert response.status_code == 400 and response.json()["code"] == "plan_not_offered"
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team"


def test_change_plan_over_the_seat_limit_is_409(acme):
    tenant, _, clients = acme
    response = send(clients["owner"], "post", f"{API}/tenant/plan", {"plan": "pro"})
    assert response.status_code == 409 and response.json()["code"] == "seat_limit"
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team"


def test_change_plan_refuses_other_fields(acme, globex):
    _, _, clients = acme
    response = send(clients["owner"], "post", f"{API}/tenant/plan", {"plan": "team", "tenant": "globex"})
    assert response.status_code == 400 and "tenant" in response.json()["errors"]


# --- members -------------------------------------------------------------------------------------


def test_list_members(acme, globex):
    _, people, clients = acme
    response = clients["member"].get(f"{API}/members")
    assert response.status_code == 200
    assert [(m["email"], m["role"]) for m in response.json()] == [
        ("owner@acme.test", "owner"), ("admin@acme.test", "admin"), ("member@acme.test", "member")]
    assert response.json()[0]["id"] == people["owner"].pk
    assert no_globex_in(response)


def test_get_member(acme):
    _, people, clients = acme
    response = clients["member"].get(f"{API}/members/{people['admin'].pk}")
    assert response.status_code == 200 and response.json()["email"] == "admin@acme.test"


def test_another_tenants_member_is_404_on_every_verb(acme, globex):
    _, _, clients = acme
    _, g = globex
    url = f"{API}/members/{g['member'].pk}"
    for method, data in (("get", None), ("patch", {"role": "admin"}), ("delete", None)):
        response = send(clients["owner"], method, url, data)
        assert response.status_code == 404, method
        assert no_globex_in(response)
    assert Membership.objects.get(pk=g["member"].pk).role == "member"


def test_nonexistent_member_is_404(acme):
    _, _, clients = acme
    assert clients["owner"].get(f"{API}/members/999999").status_code == 404
    for path in ("/members/abc", "/members/1/extra", "/nothing-here"):
        response = clients["owner"].get(API + path)
        assert response.status_code == 404 and response.json()["code"] == "not_found", path


def test_set_role(acme):
    tenant, people, clients = acme
    response = send(clients["admin"], "patch", f"{API}/members/{people['member'].pk}", {"role": "admin"})
    assert response.status_code == 200 and response.json()["role"] == "admin"
    assert Membership.objects.get(pk=people["member"].pk).role == "admin"
    assert AuditLog.objects.filter(tenant=tenant, action="member.role_changed").count() == 1


def test_set_role_as_member_is_403(acme):
    _, people, clients = acme
    response = send(clients["member"], "patch", f"{API}/members/{people['member'].pk}", {"role": "owner"})
    assert response.status_code == 403
    assert Membership.objects.get(pk=people["member"].pk).role == "member"


def test_admin_cannot_make_owners(acme):
    _, people, clients = acme
    response = send(clients["admin"], "patch", f"{API}/members/{people['member'].pk}", {"role": "owner"})
    assert response.status_code == 403 and "owners" in response.json()["detail"]


def test_set_role_refuses_unknown_role_and_other_fields(acme):
    _, people, clients = acme
    url = f"{API}/members/{people['member'].pk}"
    assert send(clients["owner"], "patch", url, {"role": "god"}).status_code == 400
    response = send(clients["owner"], "patch", url, {"role": "admin", "user": people["owner"].user.pk})
    assert response.status_code == 400 and "user" in response.json()["errors"]
    assert Membership.objects.get(pk=people["member"].pk).role == "member"


def test_last_owner_cannot_be_demoted_or_removed(acme):
    _, people, clients = acme
    url = f"{API}/members/{people['owner'].pk}"
    response = send(clients["owner"], "patch", url, {"role": "admin"})
    assert response.status_code == 409 and response.json()["code"] == "last_owner"
    response = send(clients["owner"], "delete", url)
    assert response.status_code == 409 and response.json()["code"] == "last_owner"
    assert Membership.objects.get(pk=people["owner"].pk).role == "owner"


def test_remove_member(acme):
    tenant, people, clients = acme
    response = send(clients["admin"], "delete", f"{API}/members/{people['member'].pk}")
    assert response.status_code == 204
    assert not Membership.objects.filter(pk=people["member"].pk).exists()
    assert AuditLog.objects.filter(tenant=tenant, action="member.removed", target="member@acme.test").exists()


def test_member_cannot_remove_others_but_can_leave(acme):
    _, people, clients = acme
    response = send(clients["member"], "delete", f"{API}/members/{people['admin'].pk}")
    assert response.status_code == 403
    assert Membership.objects.filter(pk=people["admin"].pk).exists()
    assert send(clients["member"], "delete", f"{API}/members/{people['member'].pk}").status_code == 204
    assert not Membership.objects.filter(pk=people["member"].pk).exists()


# --- invitations ---------------------------------------------------------------------------------


def test_invite_mails_the_link_and_never_returns_the_token(acme, mailoutbox, settings):
    settings.HEARTH_BASE_URL = "https://hearth.example.test"
    tenant, people, clients = acme
    services.member_remove(membership=people["member"], actor=people["owner"].user)  # free a seat
    response = send(clients["admin"], "post", f"{API}/members", {"email": "New@Example.test", "role": "member"})
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["email"] == "new@example.test" and body["role"] == "member" and body["state"] == "pending"
    assert body["invited_by"] == "admin@acme.test" and body["mail_sent"] is True
    assert "token" not in json.dumps(body)
    assert len(mailoutbox) == 1
    mail = mailoutbox[0]
    assert mail.to == ["new@example.test"] and "Acme" in mail.subject
    link = re.search(r"https://hearth\.example\.test/invitations/(\S+)/", mail.body)
    assert link, mail.body
    assert link.group(1) not in response.content.decode()
    # The mailed token works, for the invited address.
    invitee = MembershipFactory(user=UserFactory(email="new@example.test"), role="owner")
    response = send(api_client_for(invitee), "post", f"{API}/invitations/accept", {"token": link.group(1)})
    assert response.status_code == 201, response.json()
    assert response.json()["tenant"] == "acme" and response.json()["role"] == "member"
    assert Membership.objects.filter(tenant=tenant, user=invitee.user).exists()


def test_invite_as_member_is_403(acme, mailoutbox):
    tenant, _, clients = acme
    response = send(clients["member"], "post", f"{API}/members", {"email": "x@example.test"})
    assert response.status_code == 403
    assert not Invitation.objects.filter(tenant=tenant).exists() and not mailoutbox


def test_invite_existing_member_or_twice_is_409(acme, mailoutbox):
    tenant, people, clients = acme
    response = send(clients["owner"], "post", f"{API}/members", {"email": "MEMBER@acme.test"})
    assert response.status_code == 409 and response.json()["code"] == "already_member"
    services.member_remove(membership=people["member"], actor=people["owner"].user)  # free a seat
    assert send(clients["owner"], "post", f"{API}/members", {"email": "new@example.test"}).status_code == 201
    response = send(clients["owner"], "post", f"{API}/members", {"email": "new@example.test"})
    assert response.status_code == 409 and response.json()["code"] == "already_invited"
    assert Invitation.objects.filter(tenant=tenant).count() == 1 and len(mailoutbox) == 1


def test_invite_over_the_seat_limit_is_409(acme, mailoutbox):
    tenant, _, clients = acme  # team: 3 seats, 3 members
    response = send(clients["owner"], "post", f"{API}/members", {"email": "fourth@example.test"})
    assert response.status_code == 409
    assert response.json()["code"] == "seat_limit" and "3 seats" in response.json()["detail"]
    assert not Invitation.objects.filter(tenant=tenant).exists() and not mailoutbox


def test_invite_bad_input_is_400(acme):
    _, _, clients = acme
    for body in ({"email": "not-an-address"}, {"email": "a@b.test", "role": "emperor"}, {},
                 {"email": "a@b.test", "tenant": "globex"}):
        response = send(clients["owner"], "post", f"{API}/members", body)
        assert response.status_code == 400, body
        assert response.json()["detail"]


def test_invite_when_mail_fails_still_invites_and_says_so(acme, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 1, 1  # nothing listens
    tenant, _, clients = acme
    services.member_remove(membership=acme[1]["member"], actor=acme[1]["owner"].user)
    response = send(clients["owner"], "post", f"{API}/members", {"email": "new@example.test"})
    assert response.status_code == 201 and response.json()["mail_sent"] is False
    assert Invitation.objects.filter(tenant=tenant, email="new@example.test").exists()


def test_list_invitations(acme, globex):
    tenant, people, clients = acme
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    services.member_invite(tenant=tenant, email="pending@example.test", actor=people["owner"].user)
    response = clients["admin"].get(f"{API}/invitations")
    assert response.status_code == 200
    assert [i["email"] for i in response.json()] == ["pending@example.test"]
    assert no_globex_in(response)
    assert clients["member"].get(f"{API}/invitations").status_code == 401  # removed above: token is gone


def test_list_invitations_as_member_is_403(acme):
    _, _, clients = acme
    response = clients["member"].get(f"{API}/invitations")
    assert response.status_code == 403 and "owners and admins" in response.json()["detail"]


def test_revoke_invitation(acme):
    tenant, people, clients = acme
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    invitation, token = services.member_invite(tenant=tenant, email="p@example.test", actor=people["owner"].user)
    response = send(clients["admin"], "delete", f"{API}/invitations/{invitation.pk}")
    assert response.status_code == 204
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    assert AuditLog.objects.filter(tenant=tenant, action="member.invitation_revoked").count() == 1
    response = send(clients["admin"], "delete", f"{API}/invitations/{invitation.pk}")
    assert response.status_code == 409
    joiner = MembershipFactory(user=UserFactory(email="p@example.test"), role="owner")
    response = send(api_client_for(joiner), "post", f"{API}/invitations/accept", {"token": token})
    assert response.status_code == 409 and response.json()["code"] == "invitation_revoked"


def test_revoke_invitation_as_member_is_403(acme):
    tenant, people, clients = acme
    services.member_remove(membership=people["admin"], actor=people["owner"].user)
    invitation, _ = services.member_invite(tenant=tenant, email="p@example.test", actor=people["owner"].user)
    assert send(clients["member"], "delete", f"{API}/invitations/{invitation.pk}").status_code == 403
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_revoke_another_tenants_invitation_is_404(acme, globex):
    _, _, clients = acme
    _, g = globex
    response = send(clients["owner"], "delete", f"{API}/invitations/{g['invitation'].pk}")
    assert response.status_code == 404 and no_globex_in(response)
    g["invitation"].refresh_from_db()
    assert g["invitation"].revoked_at is None


def test_accept_checks_address_expiry_reuse_and_garbage(acme, globex):
    tenant, people, clients = acme
    globex_tenant, g = globex
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    invitation, token = services.member_invite(tenant=tenant, email="joiner@example.test",
                                               actor=people["owner"].user)
    # Someone else (with a token of Globex) cannot use it.
    response = send(g["client"], "post", f"{API}/invitations/accept", {"token": token})
    assert response.status_code == 403 and response.json()["code"] == "invitation_other_email"
    assert send(g["client"], "post", f"{API}/invitations/accept", {"token": "garbage"}).status_code == 404
    assert send(g["client"], "post", f"{API}/invitations/accept", {}).status_code == 400
    joiner = MembershipFactory(tenant=globex_tenant, user=UserFactory(email="joiner@example.test"))
    as_joiner = api_client_for(joiner)  # a plain member of Globex may still accept for themselves
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    response = send(as_joiner, "post", f"{API}/invitations/accept", {"token": token})
    assert response.status_code == 409 and response.json()["code"] == "invitation_expired"
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() + timedelta(days=1))
    assert send(as_joiner, "post", f"{API}/invitations/accept", {"token": token}).status_code == 201
    response = send(as_joiner, "post", f"{API}/invitations/accept", {"token": token})
    assert response.status_code == 409 and response.json()["code"] == "invitation_used"
    # The calling token stays in its own tenant.
    assert as_joiner.get(f"{API}/tenant").json()["slug"] == "globex"


def test_reinvite_after_expiry_is_allowed(acme, mailoutbox):
    tenant, people, clients = acme
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    first, _ = services.member_invite(tenant=tenant, email="late@example.test", actor=people["owner"].user)
    Invitation.objects.filter(pk=first.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    response = send(clients["owner"], "post", f"{API}/members", {"email": "late@example.test"})
    assert response.status_code == 201, response.json()
    first.refresh_from_db()
    assert first.revoked_at is not None


# --- tokens --------------------------------------------------------------------------------------


def test_tokens_create_list_revoke(acme):
    _, people, clients = acme
    response = send(clients["member"], "post", f"{API}/tokens", {"name": "laptop"})
    assert response.status_code == 201
    created = response.json()
    assert created["token"].startswith("hth_") and created["name"] == "laptop"
    stored = ApiToken.objects.get(pk=created["id"])
    assert stored.membership == people["member"] and created["token"] not in stored.token_hash
    listed = clients["member"].get(f"{API}/tokens").json()
    assert {t["name"] for t in listed} == {"test", "laptop"}
    assert all("token" not in t for t in listed)
    new = APIClient()
    new.credentials(HTTP_AUTHORIZATION=f"Bearer {created['token']}")
    assert new.get(f"{API}/tenant").json()["slug"] == "acme"
    assert send(clients["member"], "delete", f"{API}/tokens/{created['id']}").status_code == 204
    assert new.get(f"{API}/tenant").status_code == 401
    assert send(clients["member"], "post", f"{API}/tokens", {}).json()["name"] == "API token"


def test_tokens_are_per_membership(acme, globex):
    _, people, clients = acme
    _, g = globex
    admin_token = ApiToken.objects.get(membership=people["admin"])
    assert [t["id"] for t in clients["member"].get(f"{API}/tokens").json()] != [admin_token.pk]
    for token in (admin_token, g["token"]):
        response = send(clients["member"], "delete", f"{API}/tokens/{token.pk}")
        assert response.status_code == 404 and no_globex_in(response)
        token.refresh_from_db()
        assert token.revoked_at is None
    assert "globex-ci" not in json.dumps(clients["owner"].get(f"{API}/tokens").json())


def test_token_create_refuses_other_fields(acme):
    _, people, clients = acme
    response = send(clients["member"], "post", f"{API}/tokens", {"name": "x", "membership": people["owner"].pk})
    assert response.status_code == 400
    assert not ApiToken.objects.filter(name="x").exists()


# --- suspended tenant ----------------------------------------------------------------------------


def test_suspended_tenant_reads_but_cannot_invite(acme):
    tenant, people, clients = acme
    services.tenant_suspend(tenant=tenant, actor=UserFactory(is_staff=True))
    assert clients["member"].get(f"{API}/tenant").json()["status"] == "suspended"
    services.member_remove(membership=people["member"], actor=people["owner"].user)
    response = send(clients["owner"], "post", f"{API}/members", {"email": "x@example.test"})
    assert response.status_code == 403 and response.json()["code"] == "tenant_suspended"


# --- schema --------------------------------------------------------------------------------------


def test_schema_is_valid_openapi_with_every_path():
    response = APIClient().get("/api/schema/")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate_schema(schema)  # drf-spectacular's check against the OpenAPI 3 JSON schema
    assert schema["openapi"].startswith("3.")
    paths = schema["paths"]
    expected = {
        "/api/v1/tenant": {"get", "patch"}, "/api/v1/tenant/plan": {"post"}, "/api/v1/plans": {"get"},
        "/api/v1/members": {"get", "post"}, "/api/v1/members/{id}": {"get", "patch", "delete"},
        "/api/v1/invitations": {"get"}, "/api/v1/invitations/{id}": {"delete"},
        "/api/v1/invitations/accept": {"post"}, "/api/v1/tokens": {"get", "post"}, "/api/v1/tokens/{id}": {"delete"},
    }
    for path, methods in expected.items():
        assert set(paths[path]) >= methods, path
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http", "scheme": "bearer", "bearerFormat": "hth_…",
        "description": "A personal API token: it acts for one member of one tenant."}
    invite = paths["/api/v1/members"]["post"]
    assert "201" in invite["responses"] and "403" in invite["responses"]
    assert invite["security"] == [{"bearerAuth": []}]
    patch_tenant = paths["/api/v1/tenant"]["patch"]["requestBody"]["content"]["application/json"]["schema"]
    assert patch_tenant["$ref"].endswith("TenantUpdateInputRequest")


def test_schema_generates_without_warnings():
    # --fail-on-warn raises on any warning or error (unnamed serializers, clashing components, unknown types).
    call_command("spectacular", "--fail-on-warn", "--validate", stdout=io.StringIO(), stderr=io.StringIO())


def test_docs_page_renders():
    response = APIClient().get("/api/docs/")
    assert response.status_code == 200
    assert b"/api/schema/" in response.content
