"""Reads of the workspaces app. Each takes the tenant first; "not yours" is the same NotFound as "not there".

Visibility: a member sees their own workspaces and sessions; the tenant's owners and admins see all of the
tenant's (to help and to clean up), but only a workspace's owner can open it (its files are theirs).
"""
from django.core.exceptions import ValidationError
from django.db.models import Count, Q

from tenants.exceptions import NotFound
from tenants.models import Role
from workspaces.models import Container, Session, Workspace, WorkspaceTemplate


def _sees_all(membership):
    return membership.role in (Role.OWNER, Role.ADMIN)


def template_list(*, enabled_only=True):
    templates = WorkspaceTemplate.objects.annotate(
        warm=Count("containers", filter=Q(containers__state=Container.State.WARM,
                                          containers__node__enabled=True, containers__node__draining=False))
    ).order_by("slug")
    return templates.filter(enabled=True) if enabled_only else templates


def workspace_list(*, tenant, membership):
    workspaces = Workspace.objects.filter(tenant=tenant, deleted_at__isnull=True).select_related("template", "owner")
    if not _sees_all(membership):
        workspaces = workspaces.filter(owner_id=membership.user_id)
    return workspaces.order_by("-created_at", "-pk")


def workspace_get(*, tenant, membership, workspace_id):
    try:
        return workspace_list(tenant=tenant, membership=membership).get(pk=workspace_id)
    except (Workspace.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such workspace.") from None


def session_list(*, tenant, membership):
    sessions = Session.objects.filter(tenant=tenant).select_related("container__node", "workspace", "user")
    if not _sees_all(membership):
        sessions = sessions.filter(user_id=membership.user_id)
    return sessions.order_by("-started_at")


def session_get(*, tenant, membership, session_id):
    try:
        return session_list(tenant=tenant, membership=membership).get(pk=session_id)
    except (Session.DoesNotExist, ValueError, TypeError, ValidationError):
        raise NotFound("No such session.") from None


def live_session_for(*, workspace):
    return Session.objects.filter(workspace=workspace, ended_at__isnull=True).select_related("container").first()


def live_routes():
    """(host_key, session_id, address) of every live session: the gateway restores its map from this at start
    (set GATEWAY_ROUTES_SOURCE=workspaces.selectors.live_routes)."""
    return [
        (host_key, str(session_id), address or None)
        for host_key, session_id, address in Session.objects.filter(
            ended_at__isnull=True, container__state=Container.State.CLAIMED
        ).values_list("workspace__host_key", "pk", "container__address")
    ]
