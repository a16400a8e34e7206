"""Who may do what in which tenant: the one place for role rules, the tenant being active, and plan limits.

The API's permission classes, the portal's views, admin actions and the services all ask these functions; no other
module compares roles or statuses itself. Predicates (`can_*`, `sees_*`) answer a yes or no; `require_*` and
`*_check` raise the ServiceError that the API and the portal turn into a clear 4xx.
"""
from tenants.exceptions import Conflict, Forbidden
from tenants.models import Role, Tenant

# Owners and admins manage the tenant's members, see all its workspaces and sessions, and help or clean up.
MANAGER_ROLES = (Role.OWNER, Role.ADMIN)
OWNER_ROLES = (Role.OWNER,)

MANAGERS_ONLY = "Only the tenant's owners and admins can do this."
OWNERS_ONLY = "Only the tenant's owners can do this."


# --- roles -------------------------------------------------------------------------------------------------------


def is_owner(membership) -> bool:
    return membership is not None and membership.role == Role.OWNER


def can_manage_members(membership) -> bool:
    """Invite, remove and change the role of members; manage API tokens of the tenant."""
    return membership is not None and membership.role in MANAGER_ROLES


def can_change_plan(membership) -> bool:
    """Plans and billing are the owners' (they pay)."""
    return is_owner(membership)


def can_see_billing(membership) -> bool:
    """Amounts and invoices are shown to owners only."""
    return is_owner(membership)


def can_grant_role(membership, role) -> bool:
    """Only an owner makes, unmakes or removes an owner; managers handle everyone else."""
    return can_manage_members(membership) and (role != Role.OWNER or is_owner(membership))


def sees_all_workspaces(membership) -> bool:
    """Managers see every workspace and session of the tenant; a member sees their own."""
    return can_manage_members(membership)


def can_manage_workspace(membership, workspace) -> bool:
    """Rename, delete or look after a workspace: its owner, or a manager of the tenant."""
    return workspace.owner_id == membership.user_id or can_manage_members(membership)


def can_end_session(membership, session) -> bool:
    """Close a session: the user it belongs to, or a manager of the tenant."""
    return session.user_id == membership.user_id or can_manage_members(membership)


# --- the tenant's status -----------------------------------------------------------------------------------------


def is_active(tenant) -> bool:
    return tenant.status == Tenant.Status.ACTIVE


def require_active(tenant, *, doing=""):
    """A suspended or offboarded tenant changes nothing and opens nothing (its members can still sign in)."""
    if not is_active(tenant):
        suffix = f": {doing}" if doing else "."
        raise Forbidden(f"The tenant is {tenant.status}{suffix}", code=f"tenant_{tenant.status}")


def require_not_offboarded(tenant):
    """An offboarded tenant is gone for good; a suspended one can still be managed (and resumed)."""
    if tenant.status == Tenant.Status.OFFBOARDED:
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


def concurrent_workspaces_check(*, tenant, running):
    """Raise Conflict(concurrency_limit) when `running` sessions already fill the plan's concurrent workspaces."""
    limit = tenant.plan.max_concurrent_workspaces
    if limit is not None and running >= limit:
        raise Conflict(
            f"The {tenant.plan.name} plan runs {limit} workspace{'s' if limit != 1 else ''} at a time and "
            f"{running} {'are' if running != 1 else 'is'} open: close one or upgrade the plan.",
            code="concurrency_limit")
