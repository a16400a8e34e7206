"""Reads of the tenants app. Each takes the tenant first; "not yours" is the same NotFound as "not there"."""
from tenants.exceptions import NotFound
from tenants.models import Invitation, Membership, Plan, Tenant


def plan_list(*, public_only=True):
    plans = Plan.objects.all()
    return plans.filter(public=True) if public_only else plans


def member_list(*, tenant):
    return Membership.objects.filter(tenant=tenant).select_related("user").order_by("created_at", "pk")


def member_get(*, tenant, membership_id):
    try:
        return member_list(tenant=tenant).get(pk=membership_id)
    except (Membership.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such member.") from None


def invitation_list(*, tenant, pending_only=True):
    invitations = Invitation.objects.filter(tenant=tenant)
    if pending_only:
        invitations = invitations.filter(accepted_at__isnull=True, revoked_at__isnull=True)
    return invitations.order_by("-created_at")


def invitation_get(*, tenant, invitation_id):
    try:
        return Invitation.objects.get(tenant=tenant, pk=invitation_id)
    except (Invitation.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such invitation.") from None


def memberships_of(*, user):
    return (
        Membership.objects.filter(user=user)
        .exclude(tenant__status=Tenant.Status.OFFBOARDED)
        .select_related("tenant__plan")
        .order_by("created_at")
    )
