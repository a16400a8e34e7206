"""Reads of the workspaces app. Reads of a tenant's data take the tenant first; "not yours" is the same NotFound as
"not there". The operators' reads (templates, the pool overview, the gateway's live routes) span tenants.

Visibility: a member sees their own workspaces and sessions; the tenant's owners and admins see all of the
tenant's (to help and to clean up), but only a workspace's owner can open it (its files are theirs).
"""
from datetime import datetime, timedelta
from functools import cache
from typing import NamedTuple

from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Count, Q
from django.utils import timezone

from config import db
from tenants import policy
from tenants.exceptions import NotFound
from tenants.models import Membership
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate
from workspaces.pool import target


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


class WorkspaceRow(NamedTuple):
    id: int
    name: str
    template_slug: str
    owner_email: str
    host_key: str
    created_at: datetime


@cache
def _workspace_page_sql(*, own_only):
    """The page statement, table and column names from the models' _meta; built on first use (models ready)."""
    w, tp, u = Workspace._meta, WorkspaceTemplate._meta, get_user_model()._meta
    col = {name: f'w."{w.get_field(name).column}"' for name in ("id", "name", "host_key", "created_at",
                                                                 "tenant", "owner", "template", "deleted_at")}
    return (
        f'SELECT {col["id"]}, {col["name"]}, tp."{tp.get_field("slug").column}", u."{u.get_field("email").column}", '
        f'{col["host_key"]}, {col["created_at"]} FROM "{w.db_table}" w '
        f'JOIN "{tp.db_table}" tp ON tp.id = {col["template"]} JOIN "{u.db_table}" u ON u.id = {col["owner"]} '
        f'WHERE {col["tenant"]} = %b AND {col["deleted_at"]} IS NULL AND {col["id"]} < %b'
        + (f' AND {col["owner"]} = %b' if own_only else "")
        + f' ORDER BY {col["id"]} DESC LIMIT %b'
    )


_NO_CURSOR = 2**63 - 1  # above every bigint id: the first page


def workspace_page(*, tenant, membership, limit, before_id=None):
    """Up to `limit` WorkspaceRows of what workspace_list shows `membership`, newest id first, ids below `before_id`
    (the API's keyset cursor). Hand-written and prepared for the API's list: the ORM spent about 1 ms of CPU
    compiling the list's query and building its instances on every request."""
    own_only = not policy.sees_all_workspaces(membership)
    # A forged cursor may hold any integer; the statement binds int8 (one signature, one prepared plan).
    before_id = _NO_CURSOR if before_id is None else max(min(before_id, _NO_CURSOR), -_NO_CURSOR)
    params = [tenant.pk, before_id]
    if own_only:
        params.append(membership.user_id)
    with db.cursor(int8=True) as cursor:
        cursor.execute(_workspace_page_sql(own_only=own_only), [*params, limit])
        return [WorkspaceRow(*row) for row in cursor.fetchall()]


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


def starting_place(*, session):
    """A `starting` session's place in its template's line of cold opens and its expected wait (pool.target.Place)."""
    return target.starting_place(session)


def live_routes():
    """(host_key, session_id, address) of every live session: the gateway restores its map from this at start
    (set GATEWAY_ROUTES_SOURCE=workspaces.selectors.live_routes)."""
    return [
        (host_key, str(session_id), address or None)
        for host_key, session_id, address in Session.objects.filter(
            Q(container__state=Container.State.CLAIMED) | Q(container__isnull=True), ended_at__isnull=True
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
                "target": template.warm_target_now() if node.enabled and not node.draining else 0,
                "claims_warm": warm, "claims_cold": cold,
                "hit_rate": (warm / (warm + cold)) if warm + cold else None,
            })
    return rows


_OPENS_SQL = f"""
    SELECT w.template_id,
        count(*) FILTER (WHERE s.started_at >= %(day)s),
        count(*) FILTER (WHERE s.started_at >= %(day)s AND NOT s.cold_start),
        count(*),
        count(*) FILTER (WHERE NOT s.cold_start),
        percentile_cont(0.95) WITHIN GROUP (ORDER BY s.open_ms) FILTER (WHERE s.started_at >= %(day)s),
        percentile_cont(0.95) WITHIN GROUP (ORDER BY s.open_ms)
    FROM {Session._meta.db_table} s JOIN {Workspace._meta.db_table} w ON w.id = s.workspace_id
    WHERE s.started_at >= %(week)s AND s.started_at <= %(now)s
    GROUP BY w.template_id"""

# WARM time: from ready_at to whatever ended it (a claim, a release, removal; still WARM: now), within the window. A
# cold start's container is claimed the moment it is ready, so it adds nothing.
_WARM_END = "coalesce(c.claimed_at, c.released_at, c.removed_at, CASE WHEN c.state = 'warm' THEN %(now)s " \
            "ELSE c.updated_at END)"
_WARM_SECONDS_SQL = f"""
    SELECT c.template_id, sum(greatest(0, extract(epoch FROM least({_WARM_END}, %(now)s)
                                                         - greatest(c.ready_at, %(week)s))))
    FROM {Container._meta.db_table} c
    WHERE c.ready_at IS NOT NULL AND c.ready_at < %(now)s AND {_WARM_END} > %(week)s
    GROUP BY c.template_id"""


def pool_demand(*, now=None):
    """Per template, for the pool page: the warm target now and why, the hit rate (opens served warm ÷ opens) and
    the p95 open wait (Session.open_ms) over the last 24 hours and 7 days, and the warm container-hours of the last 7
    days with what they cost at the cost model's unit prices (billing.costs.usage_cost, the template's CPU and
    memory)."""
    from billing import costs  # the cost model's one formula; billing's models load after this app's

    now = now or timezone.now()
    params = {"now": now, "day": now - timedelta(hours=24), "week": now - timedelta(days=7)}
    with connection.cursor() as cursor:
        cursor.execute(_OPENS_SQL, params)
        opens = {row[0]: row[1:] for row in cursor.fetchall()}
        cursor.execute(_WARM_SECONDS_SQL, params)
        warm_seconds = {row[0]: float(row[1] or 0) for row in cursor.fetchall()}
    rates = costs.cost_rates()
    rows = []
    for template in WorkspaceTemplate.objects.order_by("slug"):
        opens_day, warm_day, opens_week, warm_week, p95_day, p95_week = opens.get(template.pk, (0, 0, 0, 0, None, None))
        seconds = warm_seconds.get(template.pk, 0.0)
        usage = costs.Usage(workspace_seconds=round(seconds), vcpus=template.cpus,
                            memory_gib=costs.Decimal(template.memory_mb) / costs.MIB_PER_GIB)
        rows.append({
            "template": template, "target": template.warm_target_now(), "reason": template.pool_reason,
            "decided_at": template.pool_decided_at,
            "opens_24h": opens_day, "hit_rate_24h": warm_day / opens_day if opens_day else None,
            "opens_7d": opens_week, "hit_rate_7d": warm_week / opens_week if opens_week else None,
            "p95_open_ms_24h": p95_day, "p95_open_ms_7d": p95_week,
            "warm_hours_7d": seconds / 3600,
            "warm_cost_7d": costs.usage_cost(usage, rates=rates).total, "currency": rates.currency,
        })
    return rows
