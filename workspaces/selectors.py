"""Reads of the workspaces app. Reads of a tenant's data take the tenant first; "not yours" is the same NotFound as
"not there". The operators' reads (templates, the pool overview, the gateway's live routes) span tenants.

Visibility: a member sees their own workspaces and sessions; the tenant's owners and admins see all of the
tenant's (to help and to clean up), but only a workspace's owner can open it (its files are theirs).
"""
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db.models import Count, Q
from django.utils import timezone

from tenants import policy
from tenants.exceptions import NotFound
from tenants.models import Membership
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate


def membership_of(*, tenant, user):
    """The user's membership of the tenant; not a member is the same NotFound as a workspace that is not theirs."""
    membership = Membership.objects.filter(tenant=tenant, user=user).first() if getattr(user, "pk", None) else None
    if membership is None:
        raise NotFound("No such workspace.")
    return membership


def template_list(*, enabled_only=True):
    templates = WorkspaceTemplate.objects.annotate(
        warm=Count("containers", filter=Q(containers__state=Container.State.WARM,
                                          containers__node__enabled=True, containers__node__draining=False))
    ).order_by("slug")
    return templates.filter(enabled=True) if enabled_only else templates


def workspace_list(*, tenant, membership):
    workspaces = Workspace.objects.filter(tenant=tenant, deleted_at__isnull=True).select_related("template", "owner")
    if not policy.sees_all_workspaces(membership):
        workspaces = workspaces.filter(owner_id=membership.user_id)
    return workspaces.order_by("-created_at", "-pk")


def workspace_get(*, tenant, membership, workspace_id):
    try:
        return workspace_list(tenant=tenant, membership=membership).get(pk=workspace_id)
    except (Workspace.DoesNotExist, ValueError, TypeError):
        raise NotFound("No such workspace.") from None


def session_list(*, tenant, membership):
    sessions = Session.objects.filter(tenant=tenant).select_related("container__node", "workspace", "user")
    if not policy.sees_all_workspaces(membership):
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


def pool_overview(*, since=None):
    """Per template and node: warm, provisioning, claimed counts and the hit rate of claims since `since`."""
    since = since or timezone.now() - timedelta(hours=24)
    counts = {}
    for row in Container.objects.filter(state__in=Container.ACTIVE_STATES).values(
        "template", "node", "state"
    ).annotate(n=Count("pk")):
        counts.setdefault((row["template"], row["node"]), {})[row["state"]] = row["n"]
    hits = {}
    for row in Session.objects.filter(started_at__gte=since).values("container__template", "container__node").annotate(
        warm=Count("pk", filter=Q(cold_start=False)), cold=Count("pk", filter=Q(cold_start=True))
    ):
        hits[(row["container__template"], row["container__node"])] = (row["warm"], row["cold"])
    rows = []
    for template in WorkspaceTemplate.objects.order_by("slug"):
        for node in Node.objects.order_by("name"):
            c = counts.get((template.pk, node.pk), {})
            warm, cold = hits.get((template.pk, node.pk), (0, 0))
            rows.append({
                "template": template, "node": node,
                "warm": c.get(Container.State.WARM, 0), "provisioning": c.get(Container.State.PROVISIONING, 0),
                "claimed": c.get(Container.State.CLAIMED, 0), "releasing": c.get(Container.State.RELEASING, 0),
                "target": template.warm_target if node.enabled and not node.draining else 0,
                "claims_warm": warm, "claims_cold": cold,
                "hit_rate": (warm / (warm + cold)) if warm + cold else None,
            })
    return rows
