"""The open: a user's workspace on a running container, resumed, claimed warm or started cold, with its storage bound,
its route set and a token for the gateway; a failure after the claim ends the session."""
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from config import db
from core import sql, telemetry
from core.context import context_set
from metering import services as metering_services
from tenants import policy
from tenants.exceptions import Conflict, Forbidden, NotFound, ServiceError, Unavailable
from tenants.models import Membership, Plan, Tenant
from workspaces import claiming, egress_access, metrics, routing, sessions, storage
from workspaces import runtime as rt
from workspaces.failpoints import failpoint
from workspaces.gateway.tokens import session_token_issue
from workspaces.gateway.urls import workspace_url
from workspaces.models import Container, Session, Workspace, WorkspaceTemplate
from workspaces.pool import health, opens, placement, provisioning, refill, target

log = logging.getLogger(__name__)

State = Container.State
EndReason = Session.EndReason


@dataclass
class Opened:
    session: Session
    url: str
    token: str
    expires_at: datetime
    resumed: bool = False

    @property
    def state(self):
        """`starting` while a worker starts the session's container (the gateway shows its "starting" page)."""
        return "starting" if self.session.container_id is None else "live"

    @cached_property
    def place(self):
        """A `starting` session's place in its template's line and its expected wait (pool.target.Place); None when
        live."""
        return target.starting_place(self.session) if self.state == "starting" else None


class _OpenLookup:
    """The open's one read: the workspace with its tenant, plan and template, the user's role in the tenant and
    the workspace's live session, if any. Hand-written and prepared: the ORM spent about 2 ms of CPU compiling
    the same query on every open, PostgreSQL 0.3 ms planning it."""

    def __init__(self):
        self.workspace = sql.Columns(Workspace, "w")
        self.tenant = sql.Columns(Tenant, "t")
        self.plan = sql.Columns(Plan, "p")
        self.template = sql.Columns(WorkspaceTemplate, "tp")
        self.sql = (
            f"SELECT {self.workspace.sql}, {self.tenant.sql}, {self.plan.sql}, {self.template.sql}, "
            f"(SELECT m.role FROM {Membership._meta.db_table} m WHERE m.tenant_id = w.tenant_id AND m.user_id = %s), "
            f"(SELECT s.id FROM {Session._meta.db_table} s WHERE s.workspace_id = w.id AND s.ended_at IS NULL LIMIT 1) "
            f"FROM {Workspace._meta.db_table} w "
            f"JOIN {Tenant._meta.db_table} t ON t.id = w.tenant_id "
            f"JOIN {Plan._meta.db_table} p ON p.id = t.plan_id "
            f"JOIN {WorkspaceTemplate._meta.db_table} tp ON tp.id = w.template_id "
            "WHERE w.id = %s AND w.deleted_at IS NULL"
        )
        ends, end = [], 0
        for part in (self.workspace, self.tenant, self.plan, self.template):
            end += len(part)
            ends.append(end)
        self.ends = ends

    def __call__(self, *, workspace_id, user_id):
        if user_id is None:
            return None
        row = db.fetchone(self.sql, [user_id, workspace_id])
        if row is None:
            return None
        a, b, c, d = self.ends
        workspace = self.workspace.build(row[:a])
        tenant, plan, template = self.tenant.build(row[a:b]), self.plan.build(row[b:c]), self.template.build(row[c:d])
        Tenant.plan.field.set_cached_value(tenant, plan)
        Workspace.tenant.field.set_cached_value(workspace, tenant)
        Workspace.template.field.set_cached_value(workspace, template)
        workspace.user_role, workspace.live_session_id = row[d], row[d + 1]
        return workspace


_open_lookup = _OpenLookup()


def workspace_open(*, workspace, user, tenant=None, start_later=False):
    """Give `user` a running container with their workspace's files: warm claim, else a cold start. `tenant`: the
    one the caller acts in (an API token's); a workspace of another tenant is not found, as for a stranger.
    `start_later` (the API and the portal): with no warm container, answer at once with the session `starting`
    and let a worker start its container (`session_start`) instead of holding the caller up to
    WORKSPACES_COLD_START_WAIT.

    Order: checks (tenant active, template enabled, pool not paused, entitlement), one claim transaction
    (container CLAIMED + Session), then the storage bind, the gateway route and the token. A failure after
    the claim ends the session (reason `failed`) and releases the container: nothing is left half-made.
    """
    began = timezone.now()
    workspace = _open_lookup(workspace_id=workspace.pk, user_id=getattr(user, "pk", None))
    if workspace is None or workspace.user_role is None or (tenant is not None and workspace.tenant_id != tenant.pk):
        raise NotFound("No such workspace.")
    if workspace.owner_id != user.pk:
        # Those who see every workspace of the tenant learn why they cannot open this one; others, that it is not there.
        viewer = Membership(tenant_id=workspace.tenant_id, user_id=user.pk, role=workspace.user_role)
        if policy.sees_all_workspaces(viewer):
            raise Forbidden("Only the workspace's owner can open it: its files are theirs.", code="not_owner")
        raise NotFound("No such workspace.")
    tenant, template = workspace.tenant, workspace.template
    context_set(tenant_id=tenant.pk, user_id=user.pk, workspace_id=workspace.pk)
    policy.require_active(tenant, doing="workspaces cannot be opened.")
    if not template.enabled:
        raise Conflict(f"The template '{template.slug}' is disabled.", code="template_disabled")
    if template.pool_paused:
        raise Conflict(f"The '{template.slug}' pool is paused by the operators; try again later.",
                       code="pool_paused")
    if workspace.live_session_id is not None:
        live = Session.objects.select_related("container", "workspace", "tenant").filter(
            pk=workspace.live_session_id, ended_at__isnull=True).first()
        if (live is not None and live.container_id is not None
                and not health.node_is_healthy(live.container.node_id)):
            # Its container may no longer run, and nothing may be ended on an engine that cannot be asked: the
            # event follower or the reconciler ends the session once the engine answers (or an operator drains it).
            raise provisioning.NodeUnavailable("The node running this workspace does not answer; try again shortly.")
        opened = _resume(live) if live is not None else None
        if opened is not None:
            return opened
    metering_services.entitlement_check(tenant=tenant)

    started = time.perf_counter()
    with telemetry.step("workspace.claim"):
        session = claiming.session_claim(workspace=workspace, user=user, began=began)
    metrics.claim_observe(template=template, started=started, claimed=session is not None)
    opens.open_record(template.pk)  # the demand the warm pool follows
    if session is None:
        metrics.COLD_STARTS.labels(template.slug).inc()
        if start_later:
            return _cold_open_later(workspace=workspace, user=user)
        with telemetry.span("workspace.cold_start"):
            session = _cold_start(workspace=workspace, user=user, began=began)
    context_set(session_id=session.pk)
    failpoint("open.claimed")
    try:
        _bind(session)
        failpoint("open.bound")
        routing.route_set_for_open(session)
        url, token, expires_at = _session_url_and_token(session)
    except Exception as exc:
        log.exception("opening %s failed after the claim", workspace)
        sessions.session_end(session=session, reason=EndReason.FAILED)
        if isinstance(exc, ServiceError):
            raise
        # The exception (host paths, engine addresses) is in the log above, not in the answer.
        raise ServiceError("The workspace could not be started; try again shortly.", code="open_failed") from exc
    return Opened(session=session, url=url, token=token, expires_at=expires_at)


_STARTING_LOCK_SQL = (f"SELECT container_id FROM {Session._meta.db_table} WHERE id = %s AND ended_at IS NULL "
                      "FOR NO KEY UPDATE")


def _resume(session):
    """The workspace is already open: the same session (and container) with a fresh token; None if the session
    ended since it was read (its container is being released: the caller opens a new one). A session still
    `starting` is answered as it is: its worker binds and routes it."""
    now = timezone.now()
    context_set(session_id=session.pk)
    if session.container_id is None:
        with transaction.atomic():
            # Under the row lock: the worker's attach (an UPDATE of this row) commits either before, and the
            # session is resumed as live below, or after, and its route with the address follows this one.
            row = db.fetchone(_STARTING_LOCK_SQL, [session.pk])
            if row is None:
                return None
            if row[0] is None:
                routing.route_set_locked(host_key=session.workspace.host_key, session_id=session.pk, address=None)
        if row[0] is None:
            url, token, expires_at = _session_url_and_token(session)
            return Opened(session=session, url=url, token=token, expires_at=expires_at, resumed=True)
        session = Session.objects.select_related("container", "workspace", "tenant").get(pk=session.pk)
    if not _container_serves(session.container):
        # An engine restart stops every container, and the next one it starts may get this address: routing the user
        # there would show them another session's container (found by the chaos suite). The session is lost.
        sessions.session_end(session=session, reason=EndReason.LOST)
        return None
    with transaction.atomic():
        # The row stays locked while binding and routing: a close (session_end locks it first) commits either
        # before, and the container is neither bound again nor routed while it is released, or after, and its
        # release unbinds this bind and deletes this route.
        if not Session.objects.filter(pk=session.pk, ended_at__isnull=True).update(last_activity_at=now):
            return None
        session.last_activity_at = now
        _bind(session, resumed=True)
        routing.route_set_locked(host_key=session.workspace.host_key, session_id=session.pk,
                                 address=session.container.address)
    url, token, expires_at = _session_url_and_token(session)
    return Opened(session=session, url=url, token=token, expires_at=expires_at, resumed=True)


def _container_serves(container):
    """The container runs on its engine at the address its session is routed to; an engine that does not answer
    cannot tell, and the open answers 503 node_unavailable (as a cold start there would)."""
    try:
        found = rt.runtime_for(container.node).inspect(container.engine_id)
    except (rt.RuntimeUnavailable, rt.RuntimeError_) as exc:
        health.node_call_failed(container.node, f"resuming on {container.name}", exc)
        raise provisioning.NodeUnavailable(
            f"The Docker engine of node '{container.node.name}' does not answer; try again shortly.",
            extra={"node": container.node.name}) from exc
    return found is not None and found.status == "running" and found.address == container.address


def _bind(session, *, resumed=False):
    slot = session.container.slot_path
    # A resumed session is bound already: binding again would hide its files from the running IDE for a moment.
    # (os.path.ismount cannot tell: the user's directory and the slot are on the same file system.) A new
    # session always binds; slot_bind replaces whatever might still be on the slot.
    if resumed and storage.is_mount_point(slot):
        return
    with telemetry.step("workspace.storage_bind"):
        storage.user_volume_ensure(user_dir=Path(session.workspace.storage_path).parent,
                                   size_mb=session.tenant.plan.storage_mb)
        storage.slot_bind(slot=slot, source=session.workspace.storage_path,
                          uid=provisioning.container_uid(session.container_id))
        plan = session.tenant.plan
        # Off the request path: it lands a few ms after the open answers (a warm container's address is closed).
        egress_access.session_egress_grant_later(session=session, internet_access=plan.internet_access)
        if not resumed:
            _resources_apply(session.container, plan)


def _resources_apply(container, plan):
    """The plan's CPU weight and I/O weight, and the lower of its caps and the template's (a warm container was
    started for no plan in particular, and at a low CPU weight: always applied)."""
    template = container.template
    wanted = rt.Resources(
        cpu_weight=plan.cpu_weight,
        cpus=float(min(template.cpus, plan.cpus if plan.cpus is not None else template.cpus)),
        memory_mb=min(template.memory_mb, plan.memory_mb or template.memory_mb),
        pids_limit=min(template.pids_limit, plan.pids_limit or template.pids_limit),
        io_weight=plan.io_weight,
    )
    try:
        rt.runtime_for(container.node).resources_set(container.engine_id, wanted)
    except rt.RuntimeUnavailable as exc:
        health.node_call_failed(container.node, f"resources of {container}", exc)
        raise provisioning.NodeUnavailable("The node of this workspace does not answer; try again shortly.") from exc


def _session_url_and_token(session):
    """(url, token, expires_at) for opening `session` through the gateway."""
    workspace = session.workspace
    with telemetry.step("workspace.token"):
        token, expires_at = session_token_issue(tenant_slug=session.tenant.slug, user_id=session.user_id,
                                                workspace_host_key=workspace.host_key, session_id=str(session.pk),
                                                container_id=session.container_id)
    return workspace_url(host_key=workspace.host_key, token=token), token, expires_at


def _cold_start(*, workspace, user, starting=None, began=None):
    """The pool is empty: start a container for this session, or take one that warms up in the pool meanwhile.

    Starts are limited per node (placement.provision_slot_try): with a free slot on a candidate node (least loaded
    first) this open starts its own container. While every slot is busy it joins the template's line of cold
    opens (placement.ColdOpenLine, first come first served); at the head it takes whichever comes first — a free slot,
    or a container of the template turning WARM (the refill's, or any) through the ordinary claim. Either way the
    session is a cold start (`cold_start=True`): the user waited for a container.
    """
    template = workspace.template
    deadline = time.monotonic() + settings.WORKSPACES_COLD_START_WAIT
    line = placement.ColdOpenLine(template)
    candidates, candidates_at, down, last_error = None, 0.0, set(), None
    try:
        while True:
            if line.entered:
                session = claiming.session_claim(workspace=workspace, user=user, cold=True, starting=starting,
                                                 began=began)
                if session is not None:
                    line.leave()
                    return session
            if candidates is None or time.monotonic() - candidates_at > 5.0:
                candidates = placement.placement_candidates(template, tenant=workspace.tenant)
                candidates_at = time.monotonic()
            usable = [node for node in candidates if node.pk not in down]
            if not usable:
                if last_error is not None:
                    raise last_error  # every node with room failed to answer
                raise placement.no_capacity(template)
            full = 0
            for node in usable:
                slot = placement.provision_slot_try(node)
                if slot is None:
                    continue
                line.leave()  # the next open moves up and may take the next slot while this one starts
                session, outcome = _cold_start_with_slot(workspace, user, node, slot, starting, began)
                if session is not None:
                    return session
                full += outcome == "full"
                if isinstance(outcome, provisioning.NodeUnavailable):
                    down.add(node.pk)
                    last_error = outcome
            if full and full == len(usable):
                raise placement.no_capacity(template)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise placement.PoolBusy(f"No '{template.slug}' container came free within "
                                    f"{settings.WORKSPACES_COLD_START_WAIT:.0f} s; try again shortly.")
            if line.entered:
                placement.pool_changed_wait(min(remaining, settings.WORKSPACES_POOL_POLL_INTERVAL))
            elif not line.enter(timeout=remaining):  # every slot is busy: wait for our turn, at no cost
                raise placement.PoolBusy(f"No '{template.slug}' container came free within "
                                    f"{settings.WORKSPACES_COLD_START_WAIT:.0f} s; try again shortly.")
    finally:
        line.leave()


def _cold_start_with_slot(workspace, user, node, slot, starting=None, began=None):
    """(session, outcome): with a slot of `node` held, start a container there for the session; releases the slot.

    outcome "full": no room on the node after all; a NodeUnavailable: the engine did not answer.
    """
    try:
        session = _cold_start_on(workspace=workspace, user=user, node=node, starting=starting, began=began)
    except provisioning.NodeUnavailable as exc:
        return None, exc
    finally:
        placement.provision_slot_release(node, slot)
    return session, ("started" if session is not None else "full")


def _cold_start_on(*, workspace, user, node, starting=None, began=None):
    """Start a container on `node` (the caller holds one of its slots) and open the session on it; None: no room."""
    template = workspace.template
    container = provisioning.container_provision(template=template, node=node, for_warm=False, slot_held=True)
    if container is None:
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            if starting is None:
                claiming.concurrency_check(workspace.tenant, now)
            if not Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(
                state=State.CLAIMED, ready_at=now, claimed_at=now
            ):
                raise ServiceError("The new container was given up while it started.", code="open_failed")
            container.state = State.CLAIMED
            session = claiming.session_for(workspace=workspace, user=user, container=container, now=now, cold=True,
                                   starting=starting, began=began)
            refill.pool_fill_enqueue(template.pk)
    except (ServiceError, IntegrityError) as exc:
        Container.objects.filter(pk=container.pk, state__in=(State.PROVISIONING, State.CLAIMED)).update(
            state=State.RELEASING, released_at=timezone.now())
        provisioning.container_release(container)
        if isinstance(exc, IntegrityError):
            return claiming.existing_or_conflict(workspace)
        raise
    return session


# --- the cold open that waits in a worker, not in a web thread ----------------------------------------------------


def _cold_open_later(*, workspace, user):
    """No warm container: the session now, `starting` (no container, routed to the gateway's "starting" page, its
    token valid), and a worker starts its container after the commit (`session_start`)."""
    # What the worker would refuse at once is refused now: no node with room, the tenant at its fair share.
    if not placement.placement_candidates(workspace.template, tenant=workspace.tenant):
        raise placement.NoCapacity(
            f"No node has room for another '{workspace.template.slug}' workspace; try again shortly.")
    now = timezone.now()
    try:
        with transaction.atomic():
            claiming.concurrency_check(workspace.tenant, now)
            session = claiming.session_new(workspace=workspace, user=user, container=None, now=now, cold=True)
            context_set(session_id=session.pk)
            transaction.on_commit(lambda: _session_start_enqueue(session))
    except IntegrityError:
        # A concurrent open of the same workspace won: answer with its session.
        opened = _resume(claiming.existing_or_conflict(workspace))
        if opened is None:
            raise Conflict("The workspace is being opened by another request; try again.",
                           code="open_in_progress") from None
        return opened
    url, token, expires_at = _session_url_and_token(session)
    return Opened(session=session, url=url, token=token, expires_at=expires_at)


def _session_start_enqueue(session):
    """After the commit: the "starting" route first, then the task, so the worker's route (with the container's
    address) always comes after this one."""
    from workspaces import tasks  # tasks imports the services, which import this module

    routing.route_set_for_open(session)
    try:
        tasks.session_start.delay(str(session.pk))
    except Exception as exc:  # the broker's errors come in many types; without the task nothing would start it
        log.exception("enqueueing the start of session %s failed", session.pk)
        sessions.session_end(session=session, reason=EndReason.FAILED)
        raise Unavailable("The workspace could not be started now; try again shortly.",
                          code="open_failed") from exc


def session_start(*, session_id):
    """The worker's half of a cold open: a container for a `starting` session (its own start, or one that turns
    WARM while it waits in line), its storage bound and its route set, so the gateway's "starting" page turns into
    the workspace. Safe to repeat. A failure ends the session (`failed`): the gateway then says it ended and the
    portal shows why."""
    session = Session.objects.select_related("workspace__template", "workspace__tenant__plan", "tenant__plan",
                                             "user").filter(pk=session_id).first()
    if session is None or session.ended_at is not None or session.container_id is not None:
        return session
    context_set(tenant_id=session.tenant_id, user_id=session.user_id, workspace_id=session.workspace_id,
                session_id=session.pk)
    try:
        with telemetry.span("workspace.cold_start"):
            session = _cold_start(workspace=session.workspace, user=session.user, starting=session)
        _bind(session)
        routing.route_set_for_open(session)
    except Exception:
        # A repeat (the reclaim tick enqueues a start again when its task was lost) may lose the race to the first:
        # the session then has its container and is not this run's to end.
        if Session.objects.filter(pk=session.pk, ended_at__isnull=True, container__isnull=False).exists():
            return session
        log.exception("starting %s failed", session)
        sessions.session_end(session=session, reason=EndReason.FAILED)
    return session
