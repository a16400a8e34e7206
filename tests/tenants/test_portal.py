"""The portal's pages and forms (tenants.views) through Django's test client: happy paths, errors, roles, isolation."""
import re
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from tenants import portal, services
from tenants.models import ApiToken, AuditLog, Invitation, Membership, Plan, Tenant, TenantExport
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_rate_limits(settings):
    # allauth's rate limits live in the process-wide cache and would leak from one test into the next.
    settings.ACCOUNT_RATE_LIMITS = False


@pytest.fixture
def team(db):
    """A tenant with an owner, an admin and a member, on a 10-seat plan (not public) so invitations fit."""
    plan = Plan.objects.create(slug="team-10", name="Team 10", monthly_price_cents=2500, monthly_hours=100,
                               storage_mb=10 * 1024, seats=10, max_concurrent_workspaces=3,
                               overage_price_cents_per_hour=50, public=False)
    tenant = TenantFactory(name="Acme", slug="acme", plan=plan)
    owner = MembershipFactory(tenant=tenant, role="owner", user=UserFactory(email="owner@acme.test"))
    admin = MembershipFactory(tenant=tenant, role="admin", user=UserFactory(email="admin@acme.test"))
    member = MembershipFactory(tenant=tenant, role="member", user=UserFactory(email="member@acme.test"))

    class Team:
        pass

    t = Team()
    t.tenant, t.owner, t.admin, t.member = tenant, owner, admin, member
    return t


@pytest.fixture
def other(db):
    """Another tenant with its own owner and member: its objects must look like missing ones."""
    tenant = TenantFactory(name="Globex", slug="globex")
    owner = MembershipFactory(tenant=tenant, role="owner", user=UserFactory(email="owner@globex.test"))
    member = MembershipFactory(tenant=tenant, role="member", user=UserFactory(email="member@globex.test"))
    return owner, member


def login(client, membership_or_user):
    user = getattr(membership_or_user, "user", membership_or_user)
    client.force_login(user)
    return client


def text(response):
    return re.sub(r"\s+", " ", response.content.decode())


# --- dashboard, landing, tenant switcher ---------------------------------------------------------


def test_landing_sends_anonymous_visitors_to_sign_in(client):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


def test_dashboard_shows_tenant_plan_members_and_cards(client, team):
    response = login(client, team.member).get(reverse("portal:dashboard"))
    assert response.status_code == 200
    page = text(response)
    assert "Acme" in page and "Plan: Team 10" in page
    assert "$25" in page and "100 hours a month" in page and "10 GB" in page
    assert 'id="members-title">Members</h2> <p class="big-number">3</p>' in page
    for card in ("card-workspaces", "card-usage", "card-billing"):
        assert card in page
    assert 'rel="stylesheet" href="/static/hearth.css"' in page
    assert 'aria-current="page"' in page


def test_dashboard_card_filled_by_a_registered_provider(client, team, monkeypatch):
    # The registry holds metering's real provider: replaced for this test only, put back after it.
    monkeypatch.setattr(portal, "_card_providers", dict(portal._card_providers))

    @portal.dashboard_card("usage")
    def usage_card(request, membership):
        return {"IDE time used": f"7 h of {membership.tenant.plan.monthly_hours} h"}

    page = text(login(client, team.member).get("/"))
    assert "IDE time used</dt><dd>7 h of 100 h" in page
    with pytest.raises(ValueError, match="Unknown dashboard card"):
        portal.dashboard_card("weather")


def test_user_without_tenant_is_asked_to_create_one(client, db):
    client.force_login(UserFactory())
    response = client.get("/")
    assert response.status_code == 302 and response["Location"] == reverse("portal:tenant_create")
    response = client.get(reverse("portal:tenant_create"))
    assert "You are not in an organisation yet" in text(response)


def test_create_tenant(client, db):
    user = UserFactory()
    client.force_login(user)
    # A paid plan's checkout is tests/billing/test_plan_abuse.py's.
    response = client.post(reverse("portal:tenant_create"), {"name": "Initech", "plan": "free"})
    assert response.status_code == 302
    tenant = Tenant.objects.get(name="Initech")
    assert tenant.plan.slug == "free"
    assert Membership.objects.get(tenant=tenant, user=user).role == "owner"
    assert "Initech" in text(client.get("/"))


@pytest.mark.parametrize("data", [{"name": "", "plan": "free"}, {"name": "X", "plan": "gold"}])
def test_create_tenant_form_errors_are_400_and_write_nothing(client, db, data):
    client.force_login(UserFactory())
    before = Tenant.objects.count()
    response = client.post(reverse("portal:tenant_create"), data)
    assert response.status_code == 400
    assert 'class="error"' in text(response)
    assert Tenant.objects.count() == before


def test_switcher_lists_memberships_and_switches(client, team, other):
    globex_owner, _ = other
    MembershipFactory(tenant=team.tenant, user=globex_owner.user, role="member")
    login(client, globex_owner)
    page = text(client.get("/"))
    assert 'id="tenant-switch"' in page and "Acme" in page and "Globex" in page
    response = client.post(reverse("portal:tenant_switch"), {"tenant": "acme", "next": "/members/"})
    assert response.status_code == 302 and response["Location"] == "/members/"
    assert "<h1>Acme</h1>" in text(client.get("/"))
    for unsafe in ("https://evil.test/", "//evil.test/", "/\\evil.test/"):
        response = client.post(reverse("portal:tenant_switch"), {"tenant": "globex", "next": unsafe})
        assert response["Location"] == "/"
    assert "<h1>Globex</h1>" in text(client.get("/"))


def test_switcher_hidden_with_one_membership(client, team):
    assert 'id="tenant-switch"' not in text(login(client, team.member).get("/"))


def test_switch_to_a_tenant_you_are_not_in_is_404(client, team, other):
    response = login(client, team.owner).post(reverse("portal:tenant_switch"), {"tenant": "globex"})
    assert response.status_code == 404
    assert "<h1>Acme</h1>" in text(client.get("/"))


# --- members -------------------------------------------------------------------------------------


def test_members_page_lists_members_and_invitations_for_managers(client, team):
    services.member_invite(tenant=team.tenant, email="new@acme.test", role="member", actor=team.owner.user)
    TenantFactory(plan=Plan.objects.get(slug="enterprise"))  # unrelated tenant, unlimited seats
    response = login(client, team.admin).get(reverse("portal:members"))
    page = text(response)
    assert response.status_code == 200
    for email in ("owner@acme.test", "admin@acme.test", "member@acme.test", "new@acme.test"):
        assert email in page
    assert "Invite someone" in page and "Revoke" in page


def test_members_page_for_a_member_has_no_management_forms(client, team):
    page = text(login(client, team.member).get(reverse("portal:members")))
    assert "member@acme.test" in page
    assert "Invite someone" not in page and "/role/" not in page
    assert "Only owners and admins can invite people" in page


def test_invite_sends_the_link_by_mail_and_shows_it_once(client, team, smtp_server):
    response = login(client, team.admin).post(reverse("portal:members"),
                                             {"email": "Newbie@Example.test", "role": "admin"})
    assert response.status_code == 201
    invitation = Invitation.objects.get(tenant=team.tenant, email="newbie@example.test")
    assert invitation.role == "admin" and invitation.invited_by == team.admin.user
    link = re.search(r'value="(http://testserver/invitations/[^"]+/)"', response.content.decode()).group(1)
    mail = smtp_server.wait_for(to="newbie@example.test", subject_contains="Join Acme")
    assert smtp_server.link_in(mail, "/invitations/") == link
    assert "admin@acme.test invites you to join Acme on Hearth as admin" in smtp_server.body(mail)
    assert "Invitation sent to newbie@example.test" in text(response)
    assert "newbie@example.test" in text(client.get(reverse("portal:members")))


def test_invite_without_mail_server_still_invites_and_says_so(client, team, settings):
    settings.EMAIL_BACKEND = "django.core.mail.backends.smtp.EmailBackend"
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.EMAIL_TIMEOUT = "127.0.0.1", 9, 2  # nothing listens on 9
    response = login(client, team.owner).post(reverse("portal:members"), {"email": "x@example.test", "role": "member"})
    assert response.status_code == 201
    assert "the mail could not be sent" in text(response)
    assert Invitation.objects.filter(email="x@example.test").exists()


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"email": "not-an-address", "role": "member"}, 400, "Enter a valid email address."),
        ({"email": "a@example.test", "role": "king"}, 400, "Select a valid choice."),
        ({"email": "member@acme.test", "role": "member"}, 409, "member@acme.test is already a member of Acme."),
    ],
)
def test_invite_errors_are_4xx_on_the_form_and_write_nothing(client, team, data, status, message):
    before = (Invitation.objects.count(), AuditLog.objects.count())
    response = login(client, team.owner).post(reverse("portal:members"), data)
    assert response.status_code == status
    assert message in text(response)
    assert (Invitation.objects.count(), AuditLog.objects.count()) == before


def test_invite_twice_is_a_conflict(client, team):
    login(client, team.owner).post(reverse("portal:members"), {"email": "twice@example.test", "role": "member"})
    response = client.post(reverse("portal:members"), {"email": "twice@example.test", "role": "member"})
    assert response.status_code == 409
    assert "twice@example.test already has a pending invitation." in text(response)
    assert Invitation.objects.filter(email="twice@example.test").count() == 1


def test_invite_over_the_seat_limit_is_a_conflict(client, db):
    owner = MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="pro")), role="owner")
    response = login(client, owner).post(reverse("portal:members"), {"email": "b@example.test", "role": "member"})
    assert response.status_code == 409
    assert "The Pro plan includes 1 seat and all are taken" in text(response)
    assert not Invitation.objects.exists()


def test_member_cannot_invite(client, team):
    response = login(client, team.member).post(reverse("portal:members"), {"email": "c@example.test", "role": "member"})
    assert response.status_code == 403
    assert "Only the tenant&#x27;s owners and admins can manage members." in text(response)
    assert not Invitation.objects.exists()


def test_admin_cannot_invite_an_owner(client, team):
    response = login(client, team.admin).post(reverse("portal:members"), {"email": "d@example.test", "role": "owner"})
    assert response.status_code == 403
    assert not Invitation.objects.exists()


def test_suspended_tenant_shows_banner_and_refuses_invitations(client, team):
    services.tenant_suspend(tenant=team.tenant, actor="staff")
    login(client, team.owner)
    assert "Acme is suspended." in text(client.get("/"))
    response = client.post(reverse("portal:members"), {"email": "e@example.test", "role": "member"})
    assert response.status_code == 403 and "The tenant is suspended." in text(response)


def test_change_role(client, team):
    response = login(client, team.owner).post(reverse("portal:member_role", args=[team.member.pk]), {"role": "admin"})
    assert response.status_code == 302
    team.member.refresh_from_db()
    assert team.member.role == "admin"
    assert "member@acme.test is now admin." in text(client.get(reverse("portal:members")))
    assert AuditLog.objects.filter(action="member.role_changed", target="member@acme.test").exists()


def test_change_role_errors(client, team):
    login(client, team.owner)
    response = client.post(reverse("portal:member_role", args=[team.member.pk]), {"role": "king"})
    assert response.status_code == 400
    response = client.post(reverse("portal:member_role", args=[team.owner.pk]), {"role": "member"})
    assert response.status_code == 409
    assert "A tenant needs at least one owner" in text(response)
    team.owner.refresh_from_db()
    assert team.owner.role == "owner"


def test_change_role_needs_the_role(client, team):
    response = login(client, team.member).post(reverse("portal:member_role", args=[team.admin.pk]), {"role": "member"})
    assert response.status_code == 403
    response = login(client, team.admin).post(reverse("portal:member_role", args=[team.owner.pk]), {"role": "admin"})
    assert response.status_code == 403 and "Only owners can make or unmake owners." in text(response)
    team.admin.refresh_from_db(), team.owner.refresh_from_db()
    assert (team.admin.role, team.owner.role) == ("admin", "owner")


def test_change_role_of_another_tenants_member_is_404(client, team, other):
    _, globex_member = other
    response = login(client, team.owner).post(reverse("portal:member_role", args=[globex_member.pk]),
                                              {"role": "admin"})
    assert response.status_code == 404
    globex_member.refresh_from_db()
    assert globex_member.role == "member"


def test_remove_member(client, team):
    response = login(client, team.admin).post(reverse("portal:member_remove", args=[team.member.pk]))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=team.member.pk).exists()
    assert "member@acme.test was removed from Acme." in text(client.get(reverse("portal:members")))


def test_remove_needs_the_role_and_keeps_the_last_owner(client, team):
    response = login(client, team.member).post(reverse("portal:member_remove", args=[team.admin.pk]))
    assert response.status_code == 403
    response = login(client, team.admin).post(reverse("portal:member_remove", args=[team.owner.pk]))
    assert response.status_code == 403
    response = login(client, team.owner).post(reverse("portal:member_remove", args=[team.owner.pk]))
    assert response.status_code == 409 and "The last owner cannot be removed" in text(response)
    assert Membership.objects.filter(tenant=team.tenant).count() == 3


def test_remove_another_tenants_member_is_404(client, team, other):
    _, globex_member = other
    response = login(client, team.owner).post(reverse("portal:member_remove", args=[globex_member.pk]))
    assert response.status_code == 404
    assert Membership.objects.filter(pk=globex_member.pk).exists()


def test_member_can_leave(client, team):
    response = login(client, team.member).post(reverse("portal:member_remove", args=[team.member.pk]))
    assert response.status_code == 302
    assert not Membership.objects.filter(pk=team.member.pk).exists()
    assert client.get("/")["Location"] == reverse("portal:tenant_create")


def test_sole_owner_is_not_offered_to_leave(client, team):
    page = login(client, team.owner).get(reverse("portal:members")).content.decode()
    assert reverse("portal:member_remove", args=[team.owner.pk]) not in page
    assert reverse("portal:member_remove", args=[team.member.pk]) in page
    MembershipFactory(tenant=team.tenant, role="owner")
    page = client.get(reverse("portal:members")).content.decode()
    assert reverse("portal:member_remove", args=[team.owner.pk]) in page


def test_revoke_invitation(client, team):
    invitation, _ = services.member_invite(tenant=team.tenant, email="r@example.test", actor=team.owner.user)
    response = login(client, team.admin).post(reverse("portal:invitation_revoke", args=[invitation.pk]))
    assert response.status_code == 302
    invitation.refresh_from_db()
    assert invitation.revoked_at is not None
    response = client.post(reverse("portal:invitation_revoke", args=[invitation.pk]))
    assert response.status_code == 409 and "already used or revoked" in text(response)


def test_revoke_invitation_needs_the_role_and_the_tenant(client, team, other):
    invitation, _ = services.member_invite(tenant=team.tenant, email="r@example.test", actor=team.owner.user)
    url = reverse("portal:invitation_revoke", args=[invitation.pk])
    assert login(client, team.member).post(url).status_code == 403
    globex_owner, _ = other
    assert login(client, globex_owner).post(url).status_code == 404
    invitation.refresh_from_db()
    assert invitation.revoked_at is None


def test_management_posts_need_sign_in(client, team):
    response = client.post(reverse("portal:member_remove", args=[team.member.pk]))
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert Membership.objects.filter(pk=team.member.pk).exists()


# --- invitation page -----------------------------------------------------------------------------


def invite(team, email="joiner@example.test", role="member"):
    invitation, token = services.member_invite(tenant=team.tenant, email=email, role=role, actor=team.owner.user)
    return invitation, token, reverse("portal:invitation", args=[token])


def test_invitation_with_a_bad_token_is_404(client, db):
    response = client.get(reverse("portal:invitation", args=["nope"]))
    assert response.status_code == 404
    assert "This invitation link is not valid." in text(response)


def test_invitation_for_a_visitor_offers_sign_up_and_remembers_the_token(client, team):
    _, token, url = invite(team)
    response = client.get(url)
    page = text(response)
    assert response.status_code == 200
    assert "Join Acme" in page and "joiner@example.test" in page
    assert f"{reverse('account_signup')}?email=joiner%40example.test" in page
    assert client.session[portal.INVITATION_SESSION_KEY] == token
    signup_page = text(client.get(reverse("account_signup") + "?email=joiner%40example.test"))
    assert "You are joining <strong>Acme</strong> as member" in signup_page
    assert 'value="joiner@example.test"' in signup_page
    assert 'name="organisation"' not in signup_page


def test_invitation_accept_when_signed_in(client, team):
    joiner = UserFactory(email="joiner@example.test")
    invitation, _, url = invite(team, role="admin")
    login(client, joiner)
    assert "Accept and join Acme" in text(client.get(url))
    response = client.post(url)
    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard")
    assert Membership.objects.get(tenant=team.tenant, user=joiner).role == "admin"
    page = text(client.get("/"))
    assert "You joined Acme as admin." in page and "<h1>Acme</h1>" in page
    response = client.post(url)
    assert response.status_code == 409 and "This invitation has already been used." in text(response)


def test_invitation_for_another_address_is_403(client, team):
    _, _, url = invite(team)
    someone = UserFactory(email="someone@example.test")
    response = login(client, someone).get(url)
    assert response.status_code == 403
    assert "This invitation is for joiner@example.test; you are signed in as someone@example.test." in text(response)
    assert client.post(url).status_code == 403
    assert not Membership.objects.filter(tenant=team.tenant, user=someone).exists()


@pytest.mark.parametrize(
    ("spoil", "message"),
    [
        ("expired", "This invitation has expired; ask for a new one."),
        ("revoked", "This invitation was revoked."),
        ("accepted", "This invitation has already been used."),
    ],
)
def test_closed_invitations_say_why(client, team, spoil, message):
    invitation, _, url = invite(team)
    if spoil == "expired":
        Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(minutes=1))
    elif spoil == "revoked":
        services.invitation_revoke(invitation=invitation, actor=team.owner.user)
    else:
        services.invitation_accept(token=url.split("/")[-2], user=UserFactory(email="joiner@example.test"))
    for c in (client, login(type(client)(), UserFactory(email="late@example.test"))):
        response = c.get(url)
        assert response.status_code == 409
        assert message in text(response)
    assert portal.INVITATION_SESSION_KEY not in client.session


def test_sign_in_after_opening_an_invitation_joins_the_tenant(client, team):
    from allauth.account.models import EmailAddress

    joiner = UserFactory(email="joiner@example.test")
    EmailAddress.objects.create(user=joiner, email=joiner.email, verified=True, primary=True)
    _, _, url = invite(team)
    client.get(url)
    assert "Sign in as <strong>joiner@example.test</strong> to join <strong>Acme</strong>" in text(
        client.get(reverse("account_login")))
    response = client.post(reverse("account_login"), {"login": "joiner@example.test",
                                                      "password": "correct horse battery"})
    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard")
    assert Membership.objects.filter(tenant=team.tenant, user=joiner).exists()
    assert "You joined Acme as member." in text(client.get("/"))


def test_sign_in_as_someone_else_after_opening_an_invitation_explains(client, team):
    from allauth.account.models import EmailAddress

    someone = UserFactory(email="someone@example.test")
    MembershipFactory(user=someone, role="owner")
    EmailAddress.objects.create(user=someone, email=someone.email, verified=True, primary=True)
    _, _, url = invite(team)
    client.get(url)
    response = client.post(reverse("account_login"), {"login": someone.email, "password": "correct horse battery"})
    assert response.status_code == 302 and response["Location"] == url
    response = client.get(url)
    assert response.status_code == 403
    assert "This invitation is for joiner@example.test" in text(response)


# --- plans ---------------------------------------------------------------------------------------


def test_plans_page_is_public(client, db):
    response = client.get(reverse("portal:plans"))
    page = text(response)
    assert response.status_code == 200
    for name in ("Free", "Starter", "Pro", "Team"):
        assert f'id="plan-{name.lower()}">{name}' in page
    assert "Enterprise" not in page
    assert "30 minutes a day" in page and "Extra hours at $0.50 each" in page


def test_owner_changes_plan(client, team):
    login(client, team.owner)
    page = text(client.get(reverse("portal:plans")))
    assert "Switch to Pro" in page and "Switch to Team 10" not in page
    assert 'id="plan-team-10">Team 10 <span class="badge">current</span>' in page  # shown though not public
    Membership.objects.filter(pk__in=[team.admin.pk, team.member.pk]).delete()
    # Free needs no payment (nothing pays for Team 10); a paid plan goes to checkout (tests/billing).
    response = client.post(reverse("portal:plans"), {"plan": "free"})
    assert response.status_code == 302
    team.tenant.refresh_from_db()
    assert team.tenant.plan.slug == "free"
    assert "Acme is on the Free plan." in text(client.get(reverse("portal:plans")))


def test_plan_change_errors(client, team):
    login(client, team.owner)
    response = client.post(reverse("portal:plans"), {"plan": "gold"})
    assert response.status_code == 400 and "Unknown plan &#x27;gold&#x27;" in text(response)
    response = client.post(reverse("portal:plans"), {"plan": "pro"})
    assert response.status_code == 409 and "The Pro plan includes 1 seats and Acme has 3 members" in text(response)
    response = client.post(reverse("portal:plans"), {})
    assert response.status_code == 400
    team.tenant.refresh_from_db()
    assert team.tenant.plan.slug == "team-10"


def test_only_owners_change_the_plan(client, team):
    response = login(client, team.admin).post(reverse("portal:plans"), {"plan": "enterprise"})
    assert response.status_code == 403
    assert "Switch to" not in text(client.get(reverse("portal:plans")))
    team.tenant.refresh_from_db()
    assert team.tenant.plan.slug == "team-10"


# --- API tokens ----------------------------------------------------------------------------------


def test_create_api_token_shows_it_once_and_it_works(client, team):
    login(client, team.member)
    response = client.post(reverse("portal:api_tokens"), {"name": "CI pipeline"})
    assert response.status_code == 201
    plaintext = re.search(r'id="new-token"[^>]*value="(hth_[^"]+)"', response.content.decode()).group(1)
    token = services.api_token_authenticate(plaintext)
    assert token.membership == team.member and token.name == "CI pipeline"
    assert plaintext not in text(client.get(reverse("portal:api_tokens")))
    assert "CI pipeline" in text(client.get(reverse("portal:api_tokens")))


def test_create_api_token_form_error(client, team):
    response = login(client, team.member).post(reverse("portal:api_tokens"), {"name": ""})
    assert response.status_code == 400
    assert "This field is required." in text(response)
    assert not ApiToken.objects.exists()


def test_token_list_shows_only_your_tokens_in_this_tenant(client, team, other):
    services.api_token_create(membership=team.admin, name="admin-token", actor=team.admin.user)
    services.api_token_create(membership=team.member, name="mine", actor=team.member.user)
    page = text(login(client, team.member).get(reverse("portal:api_tokens")))
    assert "mine" in page and "admin-token" not in page


def test_revoke_api_token(client, team):
    token, plaintext = services.api_token_create(membership=team.member, name="mine", actor=team.member.user)
    response = login(client, team.member).post(reverse("portal:api_token_revoke", args=[token.pk]))
    assert response.status_code == 302
    assert services.api_token_authenticate(plaintext) is None
    assert "revoked" in text(client.get(reverse("portal:api_tokens")))


def test_revoke_someone_elses_token_needs_the_role(client, team):
    token, plaintext = services.api_token_create(membership=team.admin, name="admin-token", actor=team.admin.user)
    response = login(client, team.member).post(reverse("portal:api_token_revoke", args=[token.pk]))
    assert response.status_code == 403
    assert services.api_token_authenticate(plaintext) is not None


def test_revoke_another_tenants_token_is_404(client, team, other):
    globex_owner, _ = other
    token, plaintext = services.api_token_create(membership=globex_owner, name="g", actor=globex_owner.user)
    response = login(client, team.owner).post(reverse("portal:api_token_revoke", args=[token.pk]))
    assert response.status_code == 404
    assert services.api_token_authenticate(plaintext) is not None


# --- offboarding exports -------------------------------------------------------------------------


def test_owner_downloads_the_export_of_an_offboarded_tenant(client, team, other):
    export = services.tenant_offboard(tenant=team.tenant, actor=team.owner.user)
    login(client, team.owner)
    assert client.get("/")["Location"] == reverse("portal:tenant_create")
    page = text(client.get(reverse("portal:exports")))
    assert "acme" in page and reverse("portal:export_download", args=[export.pk]) in page
    response = client.get(reverse("portal:export_download", args=[export.pk]))
    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment")
    assert b"".join(response.streaming_content)[:2] == b"\x1f\x8b"  # gzip


def test_export_is_404_for_non_owners(client, team, other):
    export = services.tenant_offboard(tenant=team.tenant, actor=team.owner.user)
    globex_owner, _ = other
    for user in (team.member.user, globex_owner.user):
        client.force_login(user)
        assert client.get(reverse("portal:export_download", args=[export.pk])).status_code == 404
        assert "There are no exports for you." in text(client.get(reverse("portal:exports")))
    assert TenantExport.objects.count() == 1


# --- tenant settings -----------------------------------------------------------------------------


def test_rename_tenant(client, team):
    response = login(client, team.admin).post(reverse("portal:tenant_settings"), {"name": "Acme Corp"})
    assert response.status_code == 302
    team.tenant.refresh_from_db()
    assert (team.tenant.name, team.tenant.slug) == ("Acme Corp", "acme")
    assert AuditLog.objects.filter(action="tenant.renamed", data__to="Acme Corp").exists()


def test_rename_errors_and_roles(client, team):
    response = login(client, team.owner).post(reverse("portal:tenant_settings"), {"name": "  "})
    assert response.status_code == 400
    response = login(client, team.member).post(reverse("portal:tenant_settings"), {"name": "Mine now"})
    assert response.status_code == 403
    assert "Only owners and admins can rename" in text(client.get(reverse("portal:tenant_settings")))
    team.tenant.refresh_from_db()
    assert team.tenant.name == "Acme"


# --- accounts (allauth) --------------------------------------------------------------------------


def test_sign_in_page_and_bad_password(client, team):
    page = text(client.get(reverse("account_login")))
    assert "Sign in to Hearth" in page and 'rel="stylesheet"' in page
    response = client.post(reverse("account_login"), {"login": "owner@acme.test", "password": "wrong"})
    assert response.status_code == 400
    assert "The email address and/or password you specified are not correct." in text(response)


def test_sign_out(client, team):
    login(client, team.owner)
    assert "Do you want to sign out" in text(client.get(reverse("account_logout")))
    response = client.post(reverse("account_logout"))
    assert response.status_code == 302
    assert client.get("/").status_code == 302


def test_signup_form_errors_are_400_and_create_nothing(client, db, smtp_server):
    before = (Tenant.objects.count(), Membership.objects.count())
    response = client.post(reverse("account_signup"), {
        "email": "bad", "password1": "a", "password2": "b", "organisation": "X", "plan": "team",
    })
    assert response.status_code == 400
    assert "Enter a valid email address." in text(response)
    assert (Tenant.objects.count(), Membership.objects.count()) == before
    assert smtp_server.messages == []


def test_signup_verify_by_mail_then_dashboard(client, db, smtp_server):
    page = text(client.get(reverse("account_signup")))
    assert 'name="organisation"' in page and 'name="plan"' in page
    response = client.post(reverse("account_signup"), {
        "email": "grace@example.test", "password1": "a long passphrase 42", "password2": "a long passphrase 42",
        "organisation": "Hopper Labs", "plan": "free",  # a paid plan's checkout: tests/billing/test_plan_abuse.py
    })
    assert response.status_code == 302 and response["Location"] == reverse("account_email_verification_sent")
    assert "Check your email" in text(client.get(response["Location"]))
    tenant = Tenant.objects.get(name="Hopper Labs")
    assert tenant.plan.slug == "free"
    assert client.get("/").status_code == 302  # not signed in before the address is confirmed

    mail = smtp_server.wait_for(to="grace@example.test", subject_contains="Confirm your email address")
    assert str(mail["Subject"]).startswith("[Hearth] ")
    link = smtp_server.link_in(mail, "/accounts/confirm-email/")
    confirm_page = client.get(link)
    assert confirm_page.status_code == 200 and "Yes, confirm" in text(confirm_page)
    response = client.post(link)
    assert response.status_code == 302
    page = text(client.get(response["Location"], follow=True))
    assert "<h1>Hopper Labs</h1>" in page and "Plan: Free" in page


def test_signup_through_an_invitation_joins_after_verification(client, team, smtp_server):
    _, _, url = invite(team, email="newcomer@example.test", role="admin")
    client.get(url)
    tenants_before = Tenant.objects.count()
    response = client.post(reverse("account_signup"), {
        "email": "newcomer@example.test", "password1": "a long passphrase 42",
        "password2": "a long passphrase 42", "plan": "free",
    })
    assert response.status_code == 302
    assert Tenant.objects.count() == tenants_before  # no tenant of their own
    assert not Membership.objects.filter(user__email="newcomer@example.test").exists()  # not before verification

    mail = smtp_server.wait_for(to="newcomer@example.test", subject_contains="Confirm")
    response = client.post(smtp_server.link_in(mail, "/accounts/confirm-email/"))
    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard")
    membership = Membership.objects.get(user__email="newcomer@example.test")
    assert (membership.tenant, membership.role) == (team.tenant, "admin")
    page = text(client.get("/"))
    assert "You joined Acme as admin." in page and "<h1>Acme</h1>" in page


def test_password_reset_by_mail(client, team, smtp_server):
    from allauth.account.models import EmailAddress

    EmailAddress.objects.create(user=team.owner.user, email="owner@acme.test", verified=True, primary=True)
    assert "Reset your password" in text(client.get(reverse("account_reset_password")))
    response = client.post(reverse("account_reset_password"), {"email": "bad"})
    assert response.status_code == 400
    response = client.post(reverse("account_reset_password"), {"email": "owner@acme.test"})
    assert response.status_code == 302
    assert "a link to choose a new password is on its way" in text(client.get(response["Location"]))

    mail = smtp_server.wait_for(to="owner@acme.test", subject_contains="Reset your Hearth password")
    link = smtp_server.link_in(mail, "/accounts/password/reset/key/")
    response = client.get(link)
    assert response.status_code == 302  # allauth moves the key into the session
    form_url = response["Location"]
    assert "Choose a new password" in text(client.get(form_url))
    response = client.post(form_url, {"password1": "short", "password2": "other"})
    assert response.status_code == 400
    response = client.post(form_url, {"password1": "a brand new passphrase", "password2": "a brand new passphrase"})
    assert response.status_code == 302
    assert "Your password is changed." in text(client.get(response["Location"]))

    assert client.get(link, follow=True).status_code == 200  # a used link says so
    assert "This link does not work" in text(client.get(link, follow=True))
    fresh = type(client)()
    response = fresh.post(reverse("account_login"), {"login": "owner@acme.test", "password": "a brand new passphrase"})
    assert response.status_code == 302
    assert "<h1>Acme</h1>" in text(fresh.get("/"))


@pytest.mark.parametrize("name", ["account_email", "account_change_password"])
def test_allauth_pages_not_restyled_one_by_one_use_the_portal_layout(client, team, name):
    response = login(client, team.owner).get(reverse(name))
    assert response.status_code == 200
    page = text(response)
    assert 'href="/static/hearth.css"' in page and '<main id="main" class="container auth"' in page
