"""Sessions after the open: activity (the gateway's counters, the API's heartbeat), metering of seconds and egress,
close and end (which frees the container), the sessions of a suspended tenant and of a user who lost access ended,
and reclaim of idle, over-quota and removed members' sessions."""
import logging
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from metering import selectors as metering_selectors
from metering import services as metering_services
from tenants import offboarding, policy
from tenants.audit import audit_record
from tenants.exceptions import Conflict, NotFound
from tenants.models import Membership
from workspaces import egress, routing, selectors
from workspaces.failpoints import failpoint
from workspaces.gateway import routes as gateway_routes
from workspaces.models import Container, Session
from workspaces.pool import provisioning

log = logging.getLogger(__name__)

State = Container.State
EndReason = Session.EndReason


def session_touch(*, session, user, now=None):
    """Record activity (the gateway does this from its counters; the API's heartbeat until then)."""
    if session.user_id != user.pk:
        raise NotFound("No such session.")
    if session.ended_at is not None:
        raise Conflict("This session has ended.", code="session_ended")
    now = now or timezone.now()
    Session.objects.filter(pk=session.pk, last_activity_at__lt=now).update(last_activity_at=now)
    session.last_activity_at = now
    return session


def session_close(*, session, actor):
    """The user (or a tenant manager) closes a session."""
    membership = selectors.membership_of(tenant=session.tenant, user=actor)
    if not policy.can_end_session(membership, session):
        raise NotFound("No such session.")
    return session_end(session=session, reason=EndReason.CLOSED, actor=actor)


def session_end(*, session, reason, actor=None, metered_to=None):
    """End a session: meter it, free its container (unbind, route off, removed) and refill the pool.

    `metered_to` (reclaim at the quota limit) meters the session only up to that moment, not to now.
    Idempotent. The database change commits first; if the engine does not answer the container stays
    RELEASING and the reconciler finishes the release.
    """
    now = timezone.now()
    with transaction.atomic():
        session = Session.objects.select_for_update().select_related("tenant", "workspace").get(pk=session.pk)
        if session.ended_at is not None:
            return session
        session.ended_at, session.end_reason = now, reason
        _usage_record(session, end=min(metered_to or now, now))
        session.save(update_fields=["ended_at", "end_reason", "metered_until"])
        Container.objects.filter(pk=session.container_id, state=State.CLAIMED).update(
            state=State.RELEASING, released_at=now)
        audit_record(tenant=session.tenant, actor=actor, action="session.ended", target=f"session:{session.pk}",
                     data={"reason": reason, "workspace": session.workspace_id,
                           "seconds": int((now - session.started_at).total_seconds())})
        template_id = Container.objects.filter(pk=session.container_id).values_list("template_id", flat=True).first()
        provisioning.pool_fill_enqueue(template_id)
    failpoint("release.committed")
    if not routing.route_delete_for(session.workspace):
        # The route may still lead to the container's address: removed now, the address would go to the next
        # container while the ended session's tokens still route there. The row stays RELEASING; the reconciler
        # deletes stale routes first, then finishes the release.
        return session
    container = Container.objects.select_related("node", "template").get(pk=session.container_id)
    try:
        provisioning.container_release(container)
    except Exception as exc:  # unbind/remove failed: RELEASING stays, the reconciler retries
        log.warning("release of %s failed: %s", container, exc)
    return session


def sessions_reclaim(*, now=None):
    """End sessions idle past the template's (or the plan's, if shorter) idle timeout, end the sessions of
    tenants whose allowance ran out (metered exactly to the limit), and meter the others up to now."""
    now = now or timezone.now()
    _activity_from_gateway(now)
    ended = 0
    # A member removed from the tenant loses their running sessions: the gateway checks only the session's token
    # and route, both alive as long as the session is.
    for session in Session.objects.filter(ended_at__isnull=True).exclude(
            Exists(Membership.objects.filter(tenant=OuterRef("tenant"), user=OuterRef("user")))):
        session_end(session=session, reason=EndReason.CLOSED)
        ended += 1
    live = list(Session.objects.filter(ended_at__isnull=True).select_related("workspace__template", "tenant__plan"))
    running = []
    for session in live:
        minutes = min(session.workspace.template.idle_timeout_minutes, session.tenant.plan.idle_timeout_minutes)
        if session.last_activity_at < now - timedelta(minutes=minutes):
            session_end(session=session, reason=EndReason.IDLE)
            ended += 1
        else:
            running.append(session)
    by_tenant = {}
    for session in running:
        by_tenant.setdefault(session.tenant_id, []).append(session)
    for sessions in by_tenant.values():
        remaining = metering_selectors.workspace_seconds_remaining(tenant=sessions[0].tenant, now=now)
        marks = [s.metered_until or s.started_at for s in sessions]
        limit_at = None if remaining is None else quota_limit_at(marks, remaining)
        for session in sessions:
            if limit_at is not None and limit_at <= now:
                session_end(session=session, reason=EndReason.QUOTA, metered_to=limit_at)
                ended += 1
                continue
            with transaction.atomic():
                locked = Session.objects.select_for_update().select_related("tenant").get(pk=session.pk)
                if locked.ended_at is None:
                    _usage_record(locked, end=now)
                    locked.save(update_fields=["metered_until"])
    return ended


def quota_limit_at(marks, remaining):
    """When sessions metered up to `marks` (datetimes) together use up `remaining` seconds, all running.

    The sessions run in parallel, so the limit is the time t with sum(max(0, t - mark)) == remaining.
    """
    remaining = max(0, remaining)
    marks = sorted(marks)
    for i, mark in enumerate(marks):
        running = i + 1
        # t lies between marks[i] and the next mark: the first `running` sessions count.
        t = (sum((m - marks[0]).total_seconds() for m in marks[:running]) + remaining) / running
        candidate = marks[0] + timedelta(seconds=t)
        if i + 1 == len(marks) or candidate <= marks[i + 1]:
            return max(candidate, mark)
    return marks[-1]


def sessions_end_for_tenant(*, tenant, reason=EndReason.SUSPENDED):
    sessions = list(Session.objects.filter(tenant=tenant, ended_at__isnull=True))
    for session in sessions:
        session_end(session=session, reason=reason)
    return len(sessions)


@offboarding.on_suspend
def _end_sessions_on_suspend(tenant):
    sessions_end_for_tenant(tenant=tenant, reason=EndReason.SUSPENDED)


def sessions_end_for_user(*, user, tenant=None, actor=None):
    """End `user`'s running sessions in `tenant` (in every tenant if None), each metered to now and routed off."""
    sessions = Session.objects.filter(user=user, ended_at__isnull=True)
    if tenant is not None:
        sessions = sessions.filter(tenant=tenant)
    sessions = list(sessions)
    for session in sessions:
        session_end(session=session, reason=EndReason.CLOSED, actor=actor)
    return len(sessions)


@offboarding.on_access_lost
def _end_sessions_on_access_lost(*, user, tenant, actor):
    sessions_end_for_user(user=user, tenant=tenant, actor=actor)


def _usage_record(session, *, end):
    """Advance session.metered_until to `end` and record the seconds; inside the caller's transaction."""
    start = session.metered_until or session.started_at
    if end <= start:
        return
    metering_services.workspace_seconds_record(tenant=session.tenant, session_id=session.pk,
                                               user_id=session.user_id, workspace_id=session.workspace_id,
                                               start=start, end=end)
    session.metered_until = end


def _activity_from_gateway(now):
    """Move last_activity_at forward from the gateway's per-session counters (idle seconds, open streams)."""
    try:
        counters = gateway_routes.counters_read()
    except Exception as exc:  # no counters this tick: the API heartbeat and the next tick still count
        log.warning("counters_read failed: %s", exc)
        return 0
    egress.egress_meter_all(counters=counters, now=now)
    touched = 0
    for session_id, c in counters.items():
        idle = 0 if c.get("active") else c.get("idle_seconds")
        if idle is None:
            continue
        seen = now - timedelta(seconds=int(idle))
        try:
            touched += Session.objects.filter(pk=session_id, ended_at__isnull=True,
                                              last_activity_at__lt=seen).update(last_activity_at=seen)
        except (ValueError, ValidationError):
            continue  # not one of ours (another install behind the same gateway)
    return touched
