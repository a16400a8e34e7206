"""Sessions after the open: activity (what the browser sends, from the gateway's counters), metering of seconds and
egress, close and end (which frees the container), the sessions of a suspended tenant and of a user who lost access
ended, and reclaim of idle, over-quota and removed members' sessions."""
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from metering import selectors as metering_selectors
from metering import services as metering_services
from tenants import offboarding, policy
from tenants.audit import audit_record
from tenants.exceptions import Conflict, NotFound
from tenants.models import Membership
from workspaces import egress, metrics, routing, selectors
from workspaces.failpoints import failpoint
from workspaces.gateway import routes as gateway_routes
from workspaces.models import Container, Session
from workspaces.pool import provisioning, refill

log = logging.getLogger(__name__)

State = Container.State
EndReason = Session.EndReason


def session_touch(*, session, user):
    """The API's heartbeat: the session if it is `user`'s and live. It is no longer activity: activity is what the
    user's browser sends through the gateway (`_activity_from_gateway`); a script calling this would otherwise
    hold a container forever."""
    if session.user_id != user.pk:
        raise NotFound("No such session.")
    if session.ended_at is not None:
        raise Conflict("This session has ended.", code="session_ended")
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
        transaction.on_commit(lambda: metrics.RECLAIMS.labels(str(reason)).inc())
        Container.objects.filter(pk=session.container_id, state=State.CLAIMED).update(
            state=State.RELEASING, released_at=now)
        audit_record(tenant=session.tenant, actor=actor, action="session.ended", target=f"session:{session.pk}",
                     data={"reason": reason, "workspace": session.workspace_id,
                           "seconds": int((now - session.started_at).total_seconds())})
        if session.container_id is not None:  # a session ended while `starting` has no container to release
            template_id = Container.objects.filter(pk=session.container_id).values_list("template_id",
                                                                                        flat=True).first()
            refill.pool_fill_enqueue(template_id)
    failpoint("release.committed")
    if not routing.route_delete_for(session.workspace) or session.container_id is None:
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
    """End sessions past the plan's longest session (metered to that moment), sessions idle past the template's (or
    the plan's, if shorter) idle timeout, the sessions of tenants whose allowance ran out (metered exactly to the
    limit), and meter the others up to now."""
    now = now or timezone.now()
    _activity_from_gateway(now)
    try:
        egress.egress_meter_all(now=now)
    except Exception:  # the log and the counters stay where they are: the next tick meters them
        log.exception("metering egress failed")
    ended = 0
    # A member removed from the tenant loses their running sessions: the gateway checks only the session's token
    # and route, both alive as long as the session is.
    for session in Session.objects.filter(ended_at__isnull=True).exclude(
            Exists(Membership.objects.filter(tenant=OuterRef("tenant"), user=OuterRef("user")))):
        session_end(session=session, reason=EndReason.CLOSED)
        ended += 1
    # A `starting` session whose worker died (or never got the task) is given up; a live worker gives up sooner.
    stuck_before = now - timedelta(seconds=settings.WORKSPACES_COLD_START_WAIT + settings.WORKSPACES_PROVISION_TIMEOUT)
    for session in Session.objects.filter(ended_at__isnull=True, container__isnull=True, started_at__lt=stuck_before):
        session_end(session=session, reason=EndReason.FAILED)
        ended += 1
    # Before that, its start is enqueued again: a worker killed mid-start (or a broker restart) loses the task, which
    # Redis would hand out again only after its visibility timeout (an hour). A repeat is harmless (session_start).
    _starts_requeue(now=now, stuck_before=stuck_before)
    live = list(Session.objects.filter(ended_at__isnull=True, container__isnull=False).select_related(
        "workspace__template", "tenant__plan"))
    running = []
    for session in live:
        minutes = min(session.workspace.template.idle_timeout_minutes, session.tenant.plan.idle_timeout_minutes)
        ends_at = policy.session_ends_at(plan=session.tenant.plan, started_at=session.started_at)
        if ends_at is not None and ends_at <= now:
            # Metered to the moment the plan's limit was reached, not to this tick.
            session_end(session=session, reason=EndReason.MAX_LENGTH, metered_to=ends_at)
            ended += 1
        elif session.last_activity_at < now - timedelta(minutes=minutes):
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
    """Advance session.metered_until to `end` and record the seconds; inside the caller's transaction. A session
    still `starting` holds no container: its time counts from when it gets one."""
    start = session.metered_until or session.started_at
    if end <= start or session.container_id is None:
        return
    metering_services.workspace_seconds_record(tenant=session.tenant, session_id=session.pk,
                                               user_id=session.user_id, workspace_id=session.workspace_id,
                                               start=start, end=end)
    session.metered_until = end


def _activity_from_gateway(now):
    """Move last_activity_at to now for sessions whose browser sent more than WORKSPACES_ACTIVITY_MIN_CLIENT_BYTES
    since the last tick (requests and WebSocket frames from the client, as the gateway counts them). An open
    connection, the container's own traffic or the API's heartbeat is not activity: they go on while nobody is
    there."""
    try:
        counters = gateway_routes.counters_read(tunnels=True)
    except Exception as exc:  # no counters this tick: sessions keep their last activity; the next tick counts
        log.warning("counters_read failed: %s", exc)
        return 0
    readings = {}
    for session_id, c in counters.items():
        try:
            readings[uuid.UUID(session_id)] = int(c.get("client_bytes") or 0)
        except (TypeError, ValueError):
            continue  # not one of ours (another install behind the same gateway)
    threshold = settings.WORKSPACES_ACTIVITY_MIN_CLIENT_BYTES
    touched = 0
    for pk, seen in Session.objects.filter(pk__in=list(readings), ended_at__isnull=True).values_list(
            "pk", "client_bytes_seen"):
        reading = readings[pk]
        if reading == seen:
            continue
        # A reading below the mark (a WebSocket closed between its live total and the table) only moves the mark.
        active = reading - seen >= threshold
        update = {"client_bytes_seen": reading, **({"last_activity_at": now} if active else {})}
        Session.objects.filter(pk=pk, ended_at__isnull=True).update(**update)
        touched += active
    return touched


def _starts_requeue(*, now, stuck_before):
    from workspaces import tasks  # tasks imports the services, which import this module

    late = now - timedelta(seconds=settings.WORKSPACES_STARTING_REQUEUE_AFTER)
    for pk in Session.objects.filter(ended_at__isnull=True, container__isnull=True, started_at__lt=late,
                                     started_at__gte=stuck_before).values_list("pk", flat=True):
        try:
            tasks.session_start.delay(str(pk))
        except Exception as exc:  # the broker is down: the next tick tries again
            log.warning("enqueueing the start of session %s again failed: %s", pk, exc)
