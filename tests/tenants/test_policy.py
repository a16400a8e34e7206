"""Every access rule once, through tenants.policy: roles, who acts (member or staff), the tenant's status, plan limits.

The endpoint tests of each app check that its views and services ask these rules; this module checks the rules.
"""
import pytest

from tenants import policy
from tenants.exceptions import Conflict, Forbidden, NotFound
from tenants.models import Membership, Plan, Role, Tenant
from tests.factories import MembershipFactory, TenantFactory, UserFactory
from workspaces.models import Session, Workspace

OWNER, ADMIN, MEMBER = Role.OWNER, Role.ADMIN, Role.MEMBER
ROLES = [OWNER, ADMIN, MEMBER, None]  # None: no membership at all


def member(role, user_id=1):
    return None if role is None else Membership(role=role, user_id=user_id)


@pytest.mark.parametrize(("role", "expected"), [(OWNER, True), (ADMIN, False), (MEMBER, False), (None, False)])
def test_only_owners_are_owners_change_the_plan_and_see_billing(role, expected):
    assert policy.is_owner(member(role)) is expected
    assert policy.can_change_plan(member(role)) is expected
    assert policy.can_see_billing(member(role)) is expected


@pytest.mark.parametrize(("role", "expected"), [(OWNER, True), (ADMIN, True), (MEMBER, False), (None, False)])
def test_owners_and_admins_manage_members_and_see_every_workspace(role, expected):
    assert policy.can_manage_members(member(role)) is expected
    assert policy.sees_all_workspaces(member(role)) is expected
    assert policy.has_role(member(role), policy.MANAGER_ROLES) is expected


@pytest.mark.parametrize(("role", "granted", "expected"), [
    (OWNER, OWNER, True), (OWNER, ADMIN, True), (OWNER, MEMBER, True),
    (ADMIN, OWNER, False), (ADMIN, ADMIN, True), (ADMIN, MEMBER, True),
    (MEMBER, OWNER, False), (MEMBER, ADMIN, False), (MEMBER, MEMBER, False),
    (None, MEMBER, False),
])
def test_only_owners_grant_or_take_away_the_owner_role(role, granted, expected):
    assert policy.can_grant_role(member(role), granted) is expected


@pytest.mark.parametrize(("role", "roles", "refused"), [
    (OWNER, (OWNER, MEMBER), False),
    (ADMIN, (ADMIN, MEMBER), False),
    (ADMIN, (MEMBER, OWNER), True),  # unmaking an owner is making one, backwards
    (MEMBER, (MEMBER,), True),
    (None, (OWNER,), False),  # staff in the control plane (no membership in the tenant)
])
def test_require_grant_checks_every_role_and_lets_staff_through(role, roles, refused):
    if refused:
        with pytest.raises(Forbidden, match="Only owners"):
            policy.require_grant(member(role), *roles)
    else:
        policy.require_grant(member(role), *roles)


@pytest.mark.parametrize(("role", "own", "expected"), [
    (MEMBER, True, True), (MEMBER, False, False), (ADMIN, False, True), (OWNER, False, True),
])
def test_a_workspace_and_a_session_are_their_users_and_the_managers(role, own, expected):
    me = member(role, user_id=1)
    someone = 1 if own else 2
    assert policy.can_manage_workspace(me, Workspace(owner_id=someone)) is expected
    assert policy.can_end_session(me, Session(user_id=someone)) is expected


@pytest.mark.parametrize(("role", "owners", "last"), [
    (OWNER, 1, True), (OWNER, 2, False), (ADMIN, 1, False), (MEMBER, 0, False),
])
def test_a_tenant_keeps_its_last_owner(role, owners, last):
    assert policy.is_last_owner(member(role), owners=owners) is last
    if last:
        with pytest.raises(Conflict) as exc:
            policy.last_owner_check(member(role), owners=owners)
        assert exc.value.code == "last_owner"
    else:
        policy.last_owner_check(member(role), owners=owners)


# --- who acts --------------------------------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(("actor", "manager", "owner"), [
    (OWNER, "ok", "ok"),
    (ADMIN, "ok", Forbidden),
    (MEMBER, Forbidden, Forbidden),
    ("outsider", NotFound, NotFound),  # not yours looks like not found
    ("staff", "staff", "staff"),  # the control plane acts without a membership
    ("staff member", Forbidden, Forbidden),  # staff who are members act under their role
    ("anonymous", NotFound, NotFound),
])
def test_who_acts_in_a_tenant(actor, manager, owner):
    tenant = TenantFactory()
    if actor in (OWNER, ADMIN, MEMBER):
        user = MembershipFactory(tenant=tenant, role=actor).user
    elif actor == "staff member":
        user = MembershipFactory(tenant=tenant, role=MEMBER, user=UserFactory(is_staff=True)).user
    elif actor == "anonymous":
        user = None
    else:
        user = UserFactory(is_staff=actor == "staff")
    for require, expected in ((policy.require_manager, manager), (policy.require_owner, owner)):
        if isinstance(expected, type):
            with pytest.raises(expected):
                require(tenant=tenant, actor=user)
        elif expected == "staff":
            assert require(tenant=tenant, actor=user) is None
        else:
            assert require(tenant=tenant, actor=user).user == user


# --- the tenant's status ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "active", "offboarded"), [
    (Tenant.Status.ACTIVE, True, False),
    (Tenant.Status.SUSPENDED, False, False),
    (Tenant.Status.OFFBOARDED, False, True),
])
def test_only_an_active_tenant_changes_and_an_offboarded_one_is_gone(status, active, offboarded):
    tenant = Tenant(status=status)
    assert policy.is_active(tenant) is active
    assert policy.is_offboarded(tenant) is offboarded
    if active:
        policy.require_active(tenant)
    else:
        with pytest.raises(Forbidden) as exc:
            policy.require_active(tenant, doing="no workspace opens")
        assert exc.value.code == f"tenant_{status}"
        assert exc.value.message == f"The tenant is {status}: no workspace opens"
    if offboarded:
        with pytest.raises(Forbidden) as exc:
            policy.require_not_offboarded(tenant)
        assert exc.value.code == "tenant_offboarded"
    else:
        policy.require_not_offboarded(tenant)


# --- plan limits -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("limit", "used", "full"), [(3, 2, False), (3, 3, True), (3, 4, True), (None, 10_000, False)])
def test_seats(limit, used, full):
    tenant = Tenant(name="Acme", plan=Plan(name="Team", seats=limit))
    if full:
        with pytest.raises(Conflict) as exc:
            policy.seats_check(tenant=tenant, used=used)
        assert exc.value.code == "seat_limit" and "3 seats" in exc.value.message
    else:
        policy.seats_check(tenant=tenant, used=used)


@pytest.mark.parametrize(("limit", "members", "fits"), [(3, 3, True), (3, 4, False), (None, 10_000, True)])
def test_a_plan_change_keeps_every_member_seated(limit, members, fits):
    tenant, plan = Tenant(name="Acme"), Plan(name="Small", seats=limit)
    if fits:
        policy.plan_seats_check(tenant=tenant, plan=plan, members=members)
    else:
        with pytest.raises(Conflict) as exc:
            policy.plan_seats_check(tenant=tenant, plan=plan, members=members)
        assert exc.value.code == "seat_limit"


@pytest.mark.parametrize(("limit", "running", "full"), [(2, 1, False), (2, 2, True), (1, 1, True), (None, 500, False)])
def test_concurrent_workspaces(limit, running, full):
    tenant = Tenant(plan=Plan(name="Team", max_concurrent_workspaces=limit))
    if full:
        with pytest.raises(Conflict) as exc:
            policy.concurrent_workspaces_check(tenant=tenant, running=running)
        assert exc.value.code == "concurrency_limit"
    else:
        policy.concurrent_workspaces_check(tenant=tenant, running=running)
