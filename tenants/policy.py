"""Who may do what in which tenant: the one place for role rules, the tenant being active, and plan limits.

The API's permission classes, the portal's views, admin actions and the services all ask these functions; no other
module compares roles or statuses itself. Predicates (`can_*`, `sees_*`) answer a yes or no; `require_*` and
`*_check` raise the ServiceError that the API and the portal turn into a clear 4xx.
"""
from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from tenants.exceptions import Conflict, Forbidden, NotFound, PaymentRequired, ServiceError
from tenants.models import Membership, Role, Tenant

# Owners and admins manage the tenant's members, see all its workspaces and sessions, and help or clean up.
MANAGER_ROLES = (Role.OWNER, Role.ADMIN)
OWNER_ROLES = (Role.OWNER,)

MANAGERS_ONLY = "Only the tenant's owners and admins can do this."
OWNERS_ONLY = "Only the tenant's owners can do this."
MANAGE_MEMBERS = "Only the tenant's owners and admins can manage members."
GRANT_OWNER = "Only owners can make or unmake owners."


# --- roles -------------------------------------------------------------------------------------------------------


def has_role(membership, roles) -> bool:
    return membership is not None and membership.role in roles


def is_owner(membership) -> bool:
    return membership is not None and membership.role == Role.OWNER


def can_manage_members(membership) -> bool:
    """Invite, remove and change the role of members; manage API tokens of the tenant."""
    return membership is not None and membership.role in MANAGER_ROLES


def can_change_plan(membership) -> bool:
    """Plans and billing are the owners' (they pay)."""
    return is_owner(membership)


def can_configure_sso(membership) -> bool:
    """Identity providers, their domains and enforcing single sign-on are the owners' (it decides who gets in)."""
    return is_owner(membership)


def can_see_billing(membership) -> bool:
    """Amounts and invoices are shown to owners only."""
    return is_owner(membership)


def can_grant_role(membership, role) -> bool:
    """Only an owner makes, unmakes or removes an owner; managers handle everyone else."""
    return can_manage_members(membership) and (role != Role.OWNER or is_owner(membership))


def is_last_owner(membership, *, owners) -> bool:
    """`owners`: how many owners the tenant has now. A tenant always keeps one."""
    return is_owner(membership) and owners <= 1


def sees_all_workspaces(membership) -> bool:
    """Managers see every workspace and session of the tenant; a member sees their own."""
    return can_manage_members(membership)


def can_manage_workspace(membership, workspace) -> bool:
    """Rename, delete or look after a workspace: its owner, or a manager of the tenant."""
    return workspace.owner_id == membership.user_id or can_manage_members(membership)


def can_end_session(membership, session) -> bool:
    """Close a session: the user it belongs to, or a manager of the tenant."""
    return session.user_id == membership.user_id or can_manage_members(membership)


def can_see_activity(membership) -> bool:
    """The tenant's activity pages (every member's sessions, the audit trail): its owners and admins."""
    return can_manage_members(membership)


# --- Hearth's staff ------------------------------------------------------------------------------------------------

BUSINESS_METRICS_PERMISSION = "insights.view_businessmetrics"


def can_see_business_metrics(user) -> bool:
    """Every tenant's revenue, usage and margin (admin › Insights): active staff with the view permission."""
    return bool(user is not None and user.is_active and user.is_staff
                and user.has_perm(BUSINESS_METRICS_PERMISSION))


# --- who acts: a member, or staff from the control plane --------------------------------------------------------


def actor_membership(*, tenant, actor):
    """How `actor` acts in `tenant`: their membership, or None for staff who are not members (the control plane acts
    on any tenant; staff who are members act under their role). Anyone else gets NotFound: not yours is not found."""
    membership = None
    if actor is not None and getattr(actor, "pk", None):
        membership = Membership.objects.filter(tenant=tenant, user=actor).first()
    if membership is None and not getattr(actor, "is_staff", False):
        raise NotFound("No such tenant.")
    return membership


def require_manager(*, tenant, actor, message=MANAGE_MEMBERS):
    """The acting membership (None: staff) if it may manage the tenant's members, else Forbidden."""
    membership = actor_membership(tenant=tenant, actor=actor)
    if membership is not None and not can_manage_members(membership):
        raise Forbidden(message)
    return membership


def require_owner(*, tenant, actor, message=OWNERS_ONLY):
    """The acting membership (None: staff) if it is an owner's, else Forbidden."""
    membership = actor_membership(tenant=tenant, actor=actor)
    if membership is not None and not is_owner(membership):
        raise Forbidden(message)
    return membership


def require_grant(membership, *roles, message=GRANT_OWNER):
    """Forbidden unless `membership` may give or take away each of `roles`; None (staff) may."""
    if membership is not None and not all(can_grant_role(membership, role) for role in roles):
        raise Forbidden(message)


def last_owner_check(membership, *, owners, message="A tenant needs at least one owner: make someone else an owner "
                                                    "first."):
    """Conflict(last_owner) when `membership`, about to stop being an owner, is the tenant's only one."""
    if is_last_owner(membership, owners=owners):
        raise Conflict(message, code="last_owner")


# --- the tenant's status -----------------------------------------------------------------------------------------


def is_active(tenant) -> bool:
    return tenant.status == Tenant.Status.ACTIVE


def require_active(tenant, *, doing="", now=None):
    """A suspended or offboarded tenant changes nothing and opens nothing (its members can still sign in); one whose
    payment is overdue past its grace period gets 402 payment_required until it pays."""
    if not is_active(tenant):
        suffix = f": {doing}" if doing else "."
        raise Forbidden(f"The tenant is {tenant.status}{suffix}", code=f"tenant_{tenant.status}")
    if is_payment_overdue(tenant, now=now):
        suffix = f" {doing}" if doing else ""
        raise PaymentRequired(
            f"{tenant.name}'s payment is overdue since {tenant.payment_due_by:%Y-%m-%d}:{suffix} an owner can pay "
            f"on the Billing page; the data is kept.")


# --- payment: a past-due subscription has a grace period, then the tenant is suspended for payment ----------------


def is_payment_overdue(tenant, *, now=None) -> bool:
    due_by = getattr(tenant, "payment_due_by", None)
    return due_by is not None and (now or timezone.now()) >= due_by


def is_in_payment_grace(tenant, *, now=None) -> bool:
    """Past due, but opens still work until `payment_due_by` (the portal shows a banner)."""
    due_by = getattr(tenant, "payment_due_by", None)
    return due_by is not None and (now or timezone.now()) < due_by


def is_free_plan(plan) -> bool:
    """Free needs no payment: no price, or a price of zero. Custom-priced plans (None) are arranged by staff."""
    return plan.monthly_price_cents == 0


def require_offered(plan):
    """Tenants choose public plans only; enterprise and other custom deals are set by staff in the control plane."""
    if not plan.public:
        raise ServiceError(f"The {plan.name} plan is arranged with Hearth's staff, not chosen here.",
                           code="plan_not_offered", field="plan")


def is_offboarded(tenant) -> bool:
    return tenant.status == Tenant.Status.OFFBOARDED


def require_not_offboarded(tenant):
    """An offboarded tenant is gone for good; a suspended one can still be managed (and resumed)."""
    if is_offboarded(tenant):
        raise Forbidden("The tenant is offboarded.", code="tenant_offboarded")


# --- plan limits -------------------------------------------------------------------------------------------------


def seats_check(*, tenant, used):
    """Raise Conflict(seat_limit) when `used` seats (members and pending invitations) fill the plan."""
    limit = tenant.plan.seats
    if limit is not None and used >= limit:
        raise Conflict(
            f"The {tenant.plan.name} plan includes {limit} seat{'s' if limit != 1 else ''} and all are taken "
            f"(members and pending invitations). Remove a member, revoke an invitation or upgrade the plan.",
            code="seat_limit",
        )


def plan_seats_check(*, tenant, plan, members):
    """Raise Conflict(seat_limit) when `plan` has fewer seats than the tenant's `members` (a downgrade)."""
    if plan.seats is not None and members > plan.seats:
        raise Conflict(
            f"The {plan.name} plan includes {plan.seats} seats and {tenant.name} has {members} members: "
            f"remove members first.",
            code="seat_limit",
        )


def plan_storage_check(*, tenant, plan, stored_bytes):
    """Raise Conflict(storage_limit) when the tenant stores more than `plan` allows (a downgrade)."""
    if plan.storage_mb is not None and stored_bytes > plan.storage_mb * 1024 * 1024:
        raise Conflict(
            f"The {plan.name} plan includes {plan.storage_mb} MB of storage and {tenant.name} stores "
            f"{stored_bytes / 1048576:.0f} MB: delete files first.",
            code="storage_limit",
        )


def concurrent_workspaces_check(*, tenant, running):
    """Raise Conflict(concurrency_limit) when `running` sessions already fill the plan's concurrent workspaces."""
    limit = tenant.plan.max_concurrent_workspaces
    if limit is not None and running >= limit:
        raise Conflict(
            f"The {tenant.plan.name} plan runs {limit} workspace{'s' if limit != 1 else ''} at a time and "
            f"{running} {'are' if running != 1 else 'is'} open: close one or upgrade the plan.",
            code="concurrency_limit")


# --- operators ---------------------------------------------------------------------------------------------------


def can_read_metrics(user) -> bool:
    """GET /metrics from outside loopback and METRICS_ALLOWED_NETWORKS: an active staff user's API token (a token acts
    for its member's user, so staff is that user's is_staff)."""
    return user is not None and user.is_active and user.is_staff


# --- tenants one user may own ------------------------------------------------------------------------------------


def tenant_limits_apply(*, actor, synthetic=False) -> bool:
    """Staff onboarding from the control plane, and synthetic tenants (load tests, demos: staff or operators only),
    are exempt from the per-user tenant limits; every other route (sign-up, portal, commands for a user) is not."""
    return not getattr(actor, "is_staff", False) and not synthetic


def tenants_owned_check(*, plan, owned_plans):
    """Raise Conflict(tenant_limit) when a user who owns tenants on `owned_plans` may not own one more on `plan`:
    TENANTS_MAX_OWNED_PER_USER of any plan, TENANTS_MAX_FREE_OWNED_PER_USER of them free (one by default)."""
    limit = settings.TENANTS_MAX_OWNED_PER_USER
    if len(owned_plans) >= limit:
        raise Conflict(
            f"You already own {len(owned_plans)} organisation{'s' if len(owned_plans) != 1 else ''}, the most one "
            f"person can own. Offboard one, or ask Hearth's staff for more.",
            code="tenant_limit", field="name", extra={"limit": limit})
    free_limit = settings.TENANTS_MAX_FREE_OWNED_PER_USER
    free = sum(is_free_plan(owned) for owned in owned_plans)
    if is_free_plan(plan) and free >= free_limit:
        raise Conflict(
            f"You already own {free} organisation{'s' if free != 1 else ''} on the Free plan and one person can "
            f"own {free_limit}: upgrade it to a paid plan (Billing) before creating another.",
            code="free_tenant_limit", field="name", extra={"limit": free_limit})


def session_ends_at(*, plan, started_at):
    """When a session started at `started_at` reaches the plan's longest session (None: no limit). Active or not:
    keep-alives and scripted traffic cannot hold a container past it."""
    if plan.max_session_hours is None:
        return None
    return started_at + timedelta(hours=plan.max_session_hours)


# --- single sign-on (the sso app keeps the identity providers; the rules on who must use them are here) ----------

SSO_REQUIRED_API = ("{tenant} requires single sign-on: this API token was created before it did, or without an SSO "
                    "sign-in. Sign in through your identity provider and create a new token.")


def sso_check(tenant):
    """Forbidden(plan_without_sso) unless the tenant's plan includes single sign-on."""
    plan = tenant.plan
    if not plan.sso_allowed:
        raise Forbidden(f"The {plan.name} plan does not include single sign-on: upgrade to a plan that does "
                        f"(Team or Enterprise).", code="plan_without_sso")


def is_sso_enforced(tenant) -> bool:
    """Its members cannot use a password, and only API tokens made after an SSO sign-in work. A plan without SSO
    lifts the enforcement (else nobody could sign in at all)."""
    return tenant.sso_enforced_at is not None and tenant.plan.sso_allowed


def password_login_check(user, *, method="a password"):
    """Forbidden(sso_required) when one of the user's tenants enforces single sign-on: then the identity provider
    is the only way in, for all of the user's tenants (a password, or a GitHub or Google sign-in (`method`), would
    bypass the IdP's own checks)."""
    enforcing = (Tenant.objects.filter(memberships__user=user, sso_enforced_at__isnull=False, plan__sso_allowed=True)
                 .order_by("name").first())
    if enforcing is not None:
        raise Forbidden(f"{enforcing.name} signs in through its identity provider, not with {method}: enter your "
                        f"work email on the sign-in page and continue with single sign-on.", code="sso_required")


def api_token_sso_check(token):
    """Forbidden(sso_required) when the token's tenant enforces SSO and the token was made before the enforcement
    or by a session that did not sign in through the identity provider."""
    tenant = token.membership.tenant
    if is_sso_enforced(tenant) and (token.sso_login_at is None or token.created_at < tenant.sso_enforced_at):
        raise Forbidden(SSO_REQUIRED_API.format(tenant=tenant.name), code="sso_required")
