"""Reads of the tenants app. Each takes the tenant first; "not yours" is the same NotFound as "not there"."""
from django.utils import timezone

from tenants.exceptions import NotFound
from tenants.models import ApiToken, AuditLog, Invitation, Membership, Plan, Tenant, TenantExport


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


def invitation_state(invitation, *, now=None):
    """"pending", "accepted", "revoked" or "expired": what an invitation page tells its visitor."""
    if invitation.accepted_at is not None:
        return "accepted"
    if invitation.revoked_at is not None:
        return "revoked"
    if invitation.expires_at <= (now or timezone.now()):
        return "expired"
    return "pending"


def api_token_list(*, tenant, user):
    """The user's own tokens in this tenant, newest first."""
    return ApiToken.objects.filter(membership__tenant=tenant, membership__user=user).order_by("-created_at")


def api_token_get(*, tenant, token_id):
    try:
        return ApiToken.objects.select_related("membership__tenant", "membership__user").get(
            membership__tenant=tenant, pk=token_id
        )
    except (ApiToken.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such API token.") from None


def export_list(*, user):
    """Offboarding archives the user may download: they were an owner of the tenant when it left."""
    return TenantExport.objects.filter(owners=user).order_by("-created_at")


def export_get(*, user, export_id):
    try:
        return export_list(user=user).get(pk=export_id)
    except (TenantExport.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such export.") from None


def audit_log_list(*, tenant, action=None):
    """The tenant's audit trail, newest first (by its kept key: rows of a former tenant with the same slug are not
    its own); `action`: only rows of that action."""
    rows = AuditLog.objects.filter(tenant_key=tenant.pk).order_by("-created_at", "-pk")
    return rows.filter(action=action) if action else rows


def audit_actions(*, tenant):
    """The actions the tenant's audit trail has rows of, for a filter's choices."""
    return list(AuditLog.objects.filter(tenant_key=tenant.pk).order_by("action").values_list("action", flat=True)
                .distinct())
