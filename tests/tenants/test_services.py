"""tenants.services: onboarding, invitations, members, plans, status, offboarding, tokens."""
import tarfile
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants import services
from tenants.events import outbox_drain
from tenants.exceptions import Conflict, Forbidden, NotFound, ServiceError
from tenants.models import AuditLog, Invitation, Membership, OutboxEvent, Tenant, TenantExport
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_onboard_creates_tenant_owner_storage_audit_and_event(settings):
    owner = UserFactory(email="ada@example.test")
    tenant = services.tenant_onboard(name="Analytical Engines", owner=owner, plan="pro")
    assert tenant.slug == "analytical-engines"
    assert tenant.plan.slug == "pro"
    assert Membership.objects.get(tenant=tenant, user=owner).role == "owner"
    assert (settings.STORAGE_ROOT / "tenants" / tenant.slug).is_dir()
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.onboarded").count() == 1
    event = OutboxEvent.objects.get(type="tenant.onboarded", tenant=tenant)
    assert event.payload["owner"] == "ada@example.test"


def test_onboard_duplicate_slug_is_a_conflict_and_writes_nothing():
    TenantFactory(slug="acme", name="Acme")
    before = (Tenant.objects.count(), AuditLog.objects.count())
    with pytest.raises(Conflict, match="taken"):
        services.tenant_onboard(name="Acme", slug="acme", owner=UserFactory())
    assert (Tenant.objects.count(), AuditLog.objects.count()) == before


def test_onboard_same_name_gets_a_fresh_slug():
    a = services.tenant_onboard(name="Acme", owner=UserFactory())
    b = services.tenant_onboard(name="Acme", owner=UserFactory())
    assert a.slug != b.slug


def test_onboard_unknown_plan_names_the_known_ones():
    with pytest.raises(ServiceError, match="Unknown plan 'gold'.*free"):
        services.tenant_onboard(name="X", owner=UserFactory(), plan="gold")


def test_invite_and_accept():
    owner = MembershipFactory(role="owner").user
    tenant = owner.memberships.get().tenant
    invitation, token = services.member_invite(tenant=tenant, email="Bob@Example.test", actor=owner)
    assert invitation.email == "bob@example.test"
    assert token not in invitation.token_hash
    bob = UserFactory(email="bob@example.test")
    membership = services.invitation_accept(token=token, user=bob)
    assert membership.role == "member"
    with pytest.raises(Conflict, match="already been used"):
        services.invitation_accept(token=token, user=bob)


def test_invitation_expired():
    owner = MembershipFactory(role="owner").user
    tenant = owner.memberships.get().tenant
    invitation, token = services.member_invite(tenant=tenant, email="c@example.test", actor=owner)
    Invitation.objects.filter(pk=invitation.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    with pytest.raises(Conflict, match="expired"):
        services.invitation_accept(token=token, user=UserFactory(email="c@example.test"))
    assert not Membership.objects.filter(user__email="c@example.test").exists()


def test_invitation_bad_token_is_not_found():
    with pytest.raises(NotFound):
        services.invitation_accept(token="nope", user=UserFactory())


def test_inviting_an_existing_member_is_refused():
    owner = MembershipFactory(role="owner").user
    tenant = owner.memberships.get().tenant
    with pytest.raises(Conflict, match="already a member"):
        services.member_invite(tenant=tenant, email=owner.email.upper(), actor=owner)


def test_seat_limit_counts_members_and_pending_invitations():
    owner = MembershipFactory(role="owner", tenant=TenantFactory()).user  # team plan: 3 seats
    tenant = owner.memberships.get().tenant
    services.member_invite(tenant=tenant, email="a@example.test", actor=owner)
    services.member_invite(tenant=tenant, email="b@example.test", actor=owner)
    with pytest.raises(Conflict, match="3 seats") as exc:
        services.member_invite(tenant=tenant, email="c@example.test", actor=owner)
    assert exc.value.code == "seat_limit"
    assert tenant.invitations.count() == 2


def test_member_cannot_invite():
    membership = MembershipFactory(role="member")
    with pytest.raises(Forbidden):
        services.member_invite(tenant=membership.tenant, email="x@example.test", actor=membership.user)


def test_outsider_gets_not_found():
    tenant = TenantFactory()
    with pytest.raises(NotFound):
        services.member_invite(tenant=tenant, email="x@example.test", actor=UserFactory())


def test_last_owner_cannot_be_removed_or_demoted():
    owner_m = MembershipFactory(role="owner")
    with pytest.raises(Conflict, match="last owner"):
        services.member_remove(membership=owner_m, actor=owner_m.user)
    with pytest.raises(Conflict, match="at least one owner"):
        services.member_set_role(membership=owner_m, role="member", actor=owner_m.user)
    assert Membership.objects.get(pk=owner_m.pk).role == "owner"


def test_admin_cannot_touch_owners():
    owner_m = MembershipFactory(role="owner")
    admin_m = MembershipFactory(role="admin", tenant=owner_m.tenant)
    with pytest.raises(Forbidden):
        services.member_remove(membership=owner_m, actor=admin_m.user)
    with pytest.raises(Forbidden):
        services.member_set_role(membership=admin_m, role="owner", actor=admin_m.user)


def test_change_plan_audited_and_seat_checked():
    owner_m = MembershipFactory(role="owner")
    MembershipFactory(tenant=owner_m.tenant)
    staff = UserFactory(is_staff=True)
    with pytest.raises(Conflict, match="seats"):
        services.tenant_change_plan(tenant=owner_m.tenant, plan="pro", actor=staff)
    with pytest.raises(Forbidden, match="only Hearth's staff set plans directly"):
        services.tenant_change_plan(tenant=owner_m.tenant, plan="free", actor=owner_m.user)
    tenant = services.tenant_change_plan(tenant=owner_m.tenant, plan="enterprise", actor=staff)
    assert tenant.plan.slug == "enterprise"
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.plan_changed", data__to="enterprise").exists()


def test_suspend_resume():
    staff = UserFactory(is_staff=True)
    tenant = TenantFactory()
    services.tenant_suspend(tenant=tenant, actor=staff, reason="unpaid")
    tenant.refresh_from_db()
    assert tenant.status == "suspended"
    services.tenant_resume(tenant=tenant, actor=staff)
    tenant.refresh_from_db()
    assert tenant.status == "active"
    assert list(AuditLog.objects.filter(tenant=tenant).values_list("action", flat=True)) == [
        "tenant.resumed", "tenant.suspended"]


def test_offboard_exports_then_deletes_and_keeps_audit(settings):
    owner = UserFactory()
    tenant = services.tenant_onboard(name="Gone Soon", owner=owner)
    (settings.STORAGE_ROOT / "tenants" / tenant.slug / "hello.txt").write_text("hi")
    export = services.tenant_offboard(tenant=tenant, actor=owner)
    assert not Tenant.objects.filter(slug="gone-soon").exists()
    assert not (settings.STORAGE_ROOT / "tenants" / "gone-soon").exists()
    assert list(TenantExport.objects.get(pk=export.pk).owners.all()) == [owner]
    with tarfile.open(export.path) as tar:
        names = tar.getnames()
        assert "gone-soon/tenant.json" in names
        assert tar.extractfile("gone-soon/storage/hello.txt").read() == b"hi"
    assert AuditLog.objects.filter(tenant_slug="gone-soon", action="tenant.offboarded").exists()


def test_api_token_hashed_and_revocable():
    membership = MembershipFactory()
    token, plaintext = services.api_token_create(membership=membership, name="ci", actor=membership.user)
    assert plaintext not in token.token_hash
    assert services.api_token_authenticate(plaintext).pk == token.pk
    services.api_token_revoke(token=token, actor=membership.user)
    assert services.api_token_authenticate(plaintext) is None


def test_outbox_delivers_each_consumer_once_and_retries_failures():
    from tenants import events

    seen, fail = [], {"on": True}

    @events.consumer("test.thing", name="ok")
    def ok(event):
        seen.append(("ok", event.id))

    @events.consumer("test.thing", name="flaky")
    def flaky(event):
        if fail["on"]:
            raise RuntimeError("provider down")
        seen.append(("flaky", event.id))

    try:
        from django.db import transaction

        with transaction.atomic():
            event = events.event_emit(type="test.thing", payload={})
        assert outbox_drain() == 0
        event.refresh_from_db()
        assert event.dispatched_at is None and "provider down" in event.last_error
        fail["on"] = False
        assert outbox_drain(now=timezone.now() + timedelta(minutes=1)) == 1
        assert seen == [("ok", event.id), ("flaky", event.id)]
    finally:
        events._consumers["test.thing"].clear()


# --- added with the API and admin work -----------------------------------------------------------


def test_owner_cannot_pick_a_non_public_plan_but_staff_can():
    owner_m = MembershipFactory(role="owner")
    with pytest.raises(ServiceError, match="arranged with Hearth's staff") as exc:
        services.tenant_request_plan(tenant=owner_m.tenant, plan="enterprise", actor=owner_m.user,
                                     return_url="http://testserver/billing/")
    assert exc.value.code == "plan_not_offered"
    owner_m.tenant.refresh_from_db()
    assert owner_m.tenant.plan.slug == "team"


def test_accepting_rechecks_the_seat_limit_after_a_downgrade():
    owner_m = MembershipFactory(role="owner")  # team: 3 seats
    tenant = owner_m.tenant
    _, token_a = services.member_invite(tenant=tenant, email="a@example.test", actor=owner_m.user)
    _, token_b = services.member_invite(tenant=tenant, email="b@example.test", actor=owner_m.user)
    tenant.plan.seats = 2  # staff shrank the plan while the invitations were out
    tenant.plan.save()
    services.invitation_accept(token=token_a, user=UserFactory(email="a@example.test"))
    with pytest.raises(Conflict, match="2 seats") as exc:
        services.invitation_accept(token=token_b, user=UserFactory(email="b@example.test"))
    assert exc.value.code == "seat_limit"
    assert tenant.memberships.count() == 2
    assert Invitation.objects.get(email="b@example.test").accepted_at is None


def test_an_expired_invitation_does_not_block_a_new_one():
    owner_m = MembershipFactory(role="owner")
    old, old_token = services.member_invite(tenant=owner_m.tenant, email="late@example.test", actor=owner_m.user)
    Invitation.objects.filter(pk=old.pk).update(expires_at=timezone.now() - timedelta(seconds=1))
    new, token = services.member_invite(tenant=owner_m.tenant, email="late@example.test", actor=owner_m.user)
    old.refresh_from_db()
    assert old.revoked_at is not None and new.is_pending
    user = UserFactory(email="late@example.test")
    with pytest.raises(Conflict, match="revoked"):
        services.invitation_accept(token=old_token, user=user)
    assert services.invitation_accept(token=token, user=user).tenant == owner_m.tenant


def test_rename_is_audited_and_checked():
    owner_m = MembershipFactory(role="owner")
    member = MembershipFactory(tenant=owner_m.tenant)
    tenant = services.tenant_rename(tenant=owner_m.tenant, name=" New name ", actor=owner_m.user)
    assert tenant.name == "New name"
    assert AuditLog.objects.get(tenant=tenant, action="tenant.renamed").data["to"] == "New name"
    with pytest.raises(Forbidden):
        services.tenant_rename(tenant=tenant, name="Mine", actor=member.user)
    with pytest.raises(NotFound):
        services.tenant_rename(tenant=tenant, name="Mine", actor=UserFactory())
    with pytest.raises(ServiceError, match="needs a name"):
        services.tenant_rename(tenant=tenant, name="  ", actor=owner_m.user)
    services.tenant_rename(tenant=tenant, name="New name", actor=owner_m.user)  # unchanged: no second row
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.renamed").count() == 1


def test_invitation_mail_carries_the_link(mailoutbox, settings):
    settings.HEARTH_BASE_URL = "https://hearth.example.test/"
    owner_m = MembershipFactory(role="owner", user__email="boss@example.test")
    invitation, token = services.member_invite(tenant=owner_m.tenant, email="new@example.test", role="admin",
                                               actor=owner_m.user)
    assert services.invitation_send_mail(invitation=invitation, token=token) is True
    (mail,) = mailoutbox
    assert mail.to == ["new@example.test"]
    assert f"https://hearth.example.test/invitations/{token}/" in mail.body
    assert "boss@example.test" in mail.body and "as admin" in mail.body


def test_an_actor_demoted_meanwhile_is_refused_under_the_lock(monkeypatch):
    admin_m = MembershipFactory(role="admin")
    target = MembershipFactory(tenant=admin_m.tenant, role="member")
    MembershipFactory(tenant=admin_m.tenant, role="owner")
    stale = Membership.objects.get(pk=admin_m.pk)
    Membership.objects.filter(pk=admin_m.pk).update(role="member")  # demoted after the request was authorised
    # Replays the interleaving: the permission check saw the actor before the concurrent demotion.
    monkeypatch.setattr(services.policy, "require_manager", lambda **kw: stale)
    with pytest.raises(Forbidden):
        services.member_remove(membership=target, actor=admin_m.user)
    with pytest.raises(Forbidden):
        services.member_set_role(membership=target, role="admin", actor=admin_m.user)
    assert Membership.objects.get(pk=target.pk).role == "member"


def test_a_reused_slug_keeps_the_old_tenants_events_and_audit_trail_apart(settings):
    from metering import services as metering_services
    from metering.models import UsageEvent

    now = timezone.now()
    old_owner, new_owner = UserFactory(), UserFactory()
    old = services.tenant_onboard(name="Acme", owner=old_owner, slug="acme")
    old_key = old.pk
    metering_services.storage_sample(tenant=old, now=now)
    metering_services.seats_sample(tenant=old, now=now)
    services.tenant_offboard(tenant=old, actor=old_owner)

    new = services.tenant_onboard(name="Acme again", owner=new_owner, slug="acme")
    assert new.pk != old_key
    (settings.STORAGE_ROOT / "tenants" / "acme" / "f.txt").write_text("12345")
    metering_services.storage_sample(tenant=new, now=now)  # the same hour and member count as the old one's
    metering_services.seats_sample(tenant=new, now=now)

    assert UsageEvent.objects.filter(tenant=new, meter__slug="storage_bytes").get().quantity == 5
    assert UsageEvent.objects.filter(tenant=new, meter__slug="seats").count() == 1
    assert UsageEvent.objects.filter(tenant_slug="acme", meter__slug="storage_bytes").count() == 2
    assert UsageEvent.objects.filter(tenant_slug="acme", meter__slug="seats").count() == 2
    old_trail = set(AuditLog.objects.filter(tenant_key=old_key).values_list("action", flat=True))
    new_trail = list(AuditLog.objects.filter(tenant_key=new.pk).values_list("action", flat=True))
    assert "tenant.offboarded" in old_trail and new_trail == ["tenant.onboarded"]
    # The slug alone mixes the two trails; the key does not.
    assert AuditLog.objects.filter(tenant_slug="acme").count() == (
        AuditLog.objects.filter(tenant_key=old_key).count() + len(new_trail))


def test_user_deactivate_and_delete_are_audited_in_each_tenant_and_idempotent():
    staff = UserFactory(is_staff=True)
    a = MembershipFactory()
    b = MembershipFactory(user=a.user)
    user = services.user_deactivate(user=a.user, actor=staff)
    assert not user.is_active
    assert services.user_deactivate(user=user, actor=staff) is not None  # a second time changes nothing
    for tenant in (a.tenant, b.tenant):
        assert AuditLog.objects.filter(tenant=tenant, action="user.deactivated", target=user.email).count() == 1
    user_pk = user.pk
    services.user_delete(user=user, actor=staff)
    assert not Membership.objects.filter(user_id=user_pk).exists()
    for tenant in (a.tenant, b.tenant):
        assert AuditLog.objects.filter(tenant=tenant, action="user.deleted", data__user=user_pk).count() == 1
