"""The claim's half of an open: the Session row on a claimed container, in one statement (autocommit) or in a
transaction with the plan's concurrency check; what `workspaces.opening` (warm opens, cold starts, the worker's
start of a `starting` session) calls."""
from django.db import IntegrityError, transaction
from django.utils import timezone

from core import sql
from tenants import policy
from tenants.exceptions import Conflict
from tenants.models import Tenant
from workspaces import egress
from workspaces.models import Session
from workspaces.pool import claim, refill


def concurrency_check(tenant, now):
    limit = tenant.plan.max_concurrent_workspaces
    if limit is None:
        return
    # Serialise this tenant's opens so two cannot both take the last slot.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    running = Session.objects.filter(tenant=tenant, ended_at__isnull=True).count()
    policy.concurrent_workspaces_check(tenant=tenant, running=running)


def wait_ms(began, now):
    """Session.open_ms: what the user has waited since the open began (None when unknown)."""
    return None if began is None else max(0, round((now - began).total_seconds() * 1000))


def session_new(*, workspace, user, container, now, cold, began=None):
    session = Session.objects.create(
        tenant=workspace.tenant, workspace=workspace, user=user, container=container, cold_start=cold,
        started_at=now, last_activity_at=now, metered_until=now, egress_marks=egress.initial_marks(container),
        open_ms=wait_ms(began, now) if container is not None else None,
    )
    # No audit row: the Session is itself the record of who opened what, when (GET /api/v1/sessions).
    session.workspace, session.container = workspace, container
    return session


def session_claim(*, workspace, user, cold=False, starting=None, began=None):
    """`cold`: the open waited for this container (a cold open served by one that turned WARM meanwhile).
    `starting`: the session (already counted against the plan's concurrency) that takes the container.
    `began`: when the open began (the session's open_ms)."""
    now = timezone.now()
    if starting is None and workspace.tenant.plan.max_concurrent_workspaces is None and (
            claim.single_statement_claims()):
        return _one_statement(workspace=workspace, user=user, now=now, cold=cold, began=began)
    try:
        with transaction.atomic():
            if starting is None:
                concurrency_check(workspace.tenant, now)
            container = claim.container_claim(template=workspace.template, tenant=workspace.tenant, now=now)
            if container is None:
                return None
            session = session_for(workspace=workspace, user=user, container=container, now=now, cold=cold,
                                   starting=starting, began=began)
            refill.pool_fill_enqueue(workspace.template_id)
    except IntegrityError:
        # A concurrent open of the same workspace won; the claim rolled back, the container stays WARM.
        return existing_or_conflict(workspace)
    return session


def session_for(*, workspace, user, container, now, cold, starting, began=None):
    """The session on `container`: a new one, or `starting` given its container (its time counts from now; its wait
    from its open, when its started_at was set)."""
    if starting is None:
        return session_new(workspace=workspace, user=user, container=container, now=now, cold=cold, began=began)
    # A `starting` session was created at the open request: its old start time is when the user asked.
    open_ms = wait_ms(starting.started_at, now)
    marks = egress.initial_marks(container)
    if not Session.objects.filter(pk=starting.pk, ended_at__isnull=True, container__isnull=True).update(
            container=container, started_at=now, last_activity_at=now, metered_until=now, open_ms=open_ms,
            egress_marks=marks):
        raise Conflict("The session was closed while its container started.", code="session_ended")
    starting.container, starting.started_at, starting.last_activity_at = container, now, now
    starting.open_ms, starting.egress_marks = open_ms, marks
    starting.metered_until = now
    return starting


def _one_statement(*, workspace, user, now, cold=False, began=None):
    """The claim and the Session insert as one statement, hence one transaction and one round trip."""
    session = Session(tenant=workspace.tenant, workspace=workspace, user=user, cold_start=cold, started_at=now,
                      last_activity_at=now, metered_until=now, open_ms=wait_ms(began, now))
    try:
        container = claim.container_claim_for_session(template=workspace.template, session=session, now=now)
    except IntegrityError:
        return existing_or_conflict(workspace)
    if container is None:
        return None
    session.container = container
    session.egress_marks = egress.initial_marks(container)  # as the statement wrote them
    sql.loaded(session)
    refill.pool_fill_enqueue(workspace.template_id)  # autocommit: runs at once, the statement has committed
    return session


def existing_or_conflict(workspace):
    live = Session.objects.select_related("container", "workspace", "tenant").filter(
        workspace=workspace, ended_at__isnull=True).first()
    if live is None:
        raise Conflict("The workspace is being opened by another request; try again.", code="open_in_progress")
    return live
