"""Each template's warm target now: its opens (pool.opens) and its lead time (measured cold starts × the provisioning
queue) through the pure rule (pool.demand), split across the usable nodes, recorded on the template for admin and for
the refill's recheck, with the hold-down that delays a shrink."""
import logging
import math
import statistics
from dataclasses import dataclass
from datetime import timedelta

from django.conf import settings
from django.db.models import Count, F, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from workspaces.models import Container, Session, WorkspaceTemplate
from workspaces.pool import opens
from workspaces.pool.demand import Bounds, target_decide
from workspaces.pool.placement import provision_concurrency, usable_nodes

log = logging.getLogger(__name__)

State = Container.State
READY_STATES = (State.PROVISIONING, State.WARM)


def cold_start_seconds(template):
    """The median time a container of `template` took to start (PROVISIONING row → WARM, or started for a cold open)
    over its last WORKSPACES_POOL_LEAD_TIME_SAMPLES starts; WORKSPACES_POOL_LEAD_TIME_DEFAULT before any."""
    rows = (Container.objects.filter(template=template, ready_at__isnull=False)
            .exclude(state=State.FAILED).order_by("-pk")
            .values_list("created_at", "ready_at")[: settings.WORKSPACES_POOL_LEAD_TIME_SAMPLES])
    durations = [(ready - created).total_seconds() for created, ready in rows]
    return statistics.median(durations) if durations else settings.WORKSPACES_POOL_LEAD_TIME_DEFAULT


def lead_time_seconds(template, *, missing, nodes):
    """How long a claimed container takes to be replaced: a cold start, times the rounds the provisioning slots need
    for the `missing` containers (missing ÷ the nodes' slots, at least one round)."""
    rounds = max(1, math.ceil(missing / (provision_concurrency() * max(1, nodes))))
    return cold_start_seconds(template) * rounds


@dataclass(frozen=True)
class PoolTarget:
    per_node: int        # WARM containers wanted on each usable node
    reason: str          # TargetDecision.explain(), or why the last target was kept
    shrink: bool         # the pool has held more than the target for the hold-down: release the surplus now


def ready_counts(template, nodes):
    """{node pk: PROVISIONING + WARM containers of `template`} on `nodes`."""
    rows = (Container.objects.filter(template=template, node__in=nodes, state__in=READY_STATES)
            .values("node").annotate(n=Count("pk")))
    counts = {row["node"]: row["n"] for row in rows}
    return {node.pk: counts.get(node.pk, 0) for node in nodes}


def pool_target_update(template, *, nodes, now=None):
    """Decide `template`'s warm target per node now and record it on the template (target, reason, time, and since
    when the pool has been above it). One Redis round trip and a few small queries."""
    now = now or timezone.now()
    n = max(1, len(nodes))
    counts = ready_counts(template, nodes)
    previous = template.warm_target_now()
    missing = sum(max(0, previous - ready) for ready in counts.values())
    lead = lead_time_seconds(template, missing=missing, nodes=n)
    try:
        times, since = opens.opens_read(
            template.pk, now=now.timestamp(), window_s=settings.WORKSPACES_POOL_DEMAND_WINDOW,
            lookahead_s=settings.WORKSPACES_POOL_DEMAND_LOOKAHEAD, days=settings.WORKSPACES_POOL_HISTORY_DAYS)
    except opens.DemandUnavailable as exc:
        log.warning("demand of %s unknown, keeping its target %s: %s", template, previous, exc)
        per_node, reason = previous, f"{previous} (kept: the demand could not be read)"
    else:
        # The bounds are per node; the rule sizes the template's whole pool, split evenly across the usable nodes.
        decision = target_decide(
            bounds=Bounds(minimum=template.warm_min * n, maximum=template.warm_max * n), opens=times,
            now=now.timestamp(), lead_time_s=lead, window_s=settings.WORKSPACES_POOL_DEMAND_WINDOW,
            lookahead_s=settings.WORKSPACES_POOL_DEMAND_LOOKAHEAD, history_days=settings.WORKSPACES_POOL_HISTORY_DAYS,
            history_since=since)
        per_node = max(template.warm_min, min(template.warm_max, math.ceil(decision.target / n)))
        reason = decision.explain() + (f"; {per_node} per node on {n} nodes" if n > 1 else "")
    above = any(ready > per_node for ready in counts.values())
    # Since when, from the row as it is now (another worker's tick may have cleared or set it since we read it).
    rows = WorkspaceTemplate.objects.filter(pk=template.pk)
    rows.update(pool_target=per_node, pool_reason=reason[:300], pool_decided_at=now,
                pool_above_since=Coalesce(F("pool_above_since"), Value(now)) if above else None)
    above_since = rows.values_list("pool_above_since", flat=True).first() if above else None
    shrink = above_since is not None and now - above_since >= timedelta(seconds=settings.WORKSPACES_POOL_SHRINK_HOLD)
    template.pool_target, template.pool_reason, template.pool_decided_at = per_node, reason[:300], now
    template.pool_above_since = above_since
    return PoolTarget(per_node=per_node, reason=reason, shrink=shrink)


@dataclass(frozen=True)
class Place:
    position: int            # 1: the next container of its template is this session's
    expected_wait_s: float   # from now: a cold start per round of the usable nodes' provisioning slots


def starting_place(session):
    """Where a `starting` session (a cold open answered at once) stands in its template's line, and its expected
    wait: the template's starting sessions opened before it (plus itself), started `slots` at a time, each round a
    measured cold start. What the portal and the open's 202 show instead of a bare spinner."""
    template = session.workspace.template
    position = Session.objects.filter(
        workspace__template_id=template.pk, container__isnull=True, ended_at__isnull=True,
        started_at__lte=session.started_at).count() or 1
    slots = provision_concurrency() * max(1, usable_nodes().count())
    wait = cold_start_seconds(template) * math.ceil(position / slots)
    return Place(position=position, expected_wait_s=round(wait, 1))
