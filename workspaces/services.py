"""Writes of the workspaces app: create, open (claim, bind, session, URL), close, delete, drain, pause.

Metering (entitlements, workspace seconds) and the gateway (tokens, routes, counters) are called from the
small functions under "metering and the gateway" below, and nowhere else in this module.
"""
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from config import db
from core import sql
from metering import selectors as metering_selectors
from metering import services as metering_services
from tenants import offboarding
from tenants.audit import audit_record
from tenants.exceptions import Conflict, Forbidden, NotFound, ServiceError
from tenants.models import Membership, Plan, Role, Tenant
from workspaces import pool, selectors, storage
from workspaces.failpoints import failpoint
from workspaces.gateway import routes as gateway_routes
from workspaces.gateway.runtime_api import GatewayUnavailable
from workspaces.gateway.tokens import session_token_issue
from workspaces.gateway.urls import workspace_url
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate

log = logging.getLogger(__name__)

State = Container.State
EndReason = Session.EndReason


# --- metering and the gateway --------------------------------------------------------------------


def _entitlement_check(tenant):
    metering_services.entitlement_check(tenant=tenant)


def _usage_record(session, *, end):
    """Advance session.metered_until to `end` and record the seconds; inside the caller's transaction."""
    start = session.metered_until or session.started_at
    if end <= start:
        return
    metering_services.workspace_seconds_record(tenant=session.tenant, session_id=session.pk,
                                               user_id=session.user_id, workspace_id=session.workspace_id,
                                               start=start, end=end)
    session.metered_until = end


def _session_url_and_token(session):
    """(url, token, expires_at) for opening `session` through the gateway."""
    workspace = session.workspace
    token, expires_at = session_token_issue(tenant_slug=session.tenant.slug, user_id=session.user_id,
                                            workspace_host_key=workspace.host_key, session_id=str(session.pk),
                                            container_id=session.container_id)
    return workspace_url(host_key=workspace.host_key, token=token), token, expires_at


_SESSION_LIVE_SQL = f"SELECT 1 FROM {Session._meta.db_table} WHERE id = %s AND ended_at IS NULL"


def _route_set(session):
    """Route a session this open has just claimed, and make sure an end racing with it leaves no route.

    session_end commits ended_at, then deletes the route; this sets the route, then reads ended_at. Either the
    delete comes after the set (and removes it) or the read comes after the commit (and the route is taken back
    here): an ended session keeps no route past its open's answer. The route can lead to the ending session's own
    container for the microseconds between the set and the read; its address goes to another container only
    once that one is removed and a new one started, hundreds of milliseconds later. No row lock: on the warm
    open's path it cost a transaction with a WAL flush (+25 % CPU per open at 20 concurrent opens).
    """
    host_key, session_id = session.workspace.host_key, str(session.pk)
    _route_set_locked(host_key=host_key, session_id=session.pk, address=session.container.address)
    if db.fetchone(_SESSION_LIVE_SQL, [session.pk]) is None:
        try:
            route = gateway_routes.route_get(host_key)
            if route is not None and route.session_id == session_id:
                gateway_routes.route_delete(host_key=host_key)
        except GatewayUnavailable as exc:  # the reconciler's route sync removes routes of ended sessions
            log.warning("route_delete(%s) after a racing end failed: %s", host_key, exc)
        raise Conflict("This session ended while it was being opened; open the workspace again.",
                       code="session_ended")


# NO KEY UPDATE is what the end's own UPDATE of ended_at takes.
_LIVE_SESSION_LOCK_SQL = f"SELECT 1 FROM {Session._meta.db_table} WHERE id = %s AND ended_at IS NULL FOR NO KEY UPDATE"


def _session_lock_if_live(session_id) -> bool:
    """In a transaction: lock the session's row; False if it has ended."""
    return db.fetchone(_LIVE_SESSION_LOCK_SQL, [session_id]) is not None


def _route_set_while_live(*, host_key, session_id, address):
    """Route a session only while it is live; False (and no route) once it has ended.

    session_end commits ended_at, then deletes the route. A route_set by an open (or the reconciler) that read the
    session as live before that commit would put the route back after the delete, and the ended session's tokens
    would reach whichever container is given its address next. Under the session's row lock the route_set comes
    either before the end's commit (whose delete then follows) or after it, and sees the session ended.
    """
    with transaction.atomic():
        if not _session_lock_if_live(session_id):
            return False
        _route_set_locked(host_key=host_key, session_id=session_id, address=address)
    return True


def _route_set_locked(*, host_key, session_id, address):
    """route_set for a session whose row lock this transaction holds (so it is live)."""
    try:
        gateway_routes.route_set(host_key=host_key, session_id=str(session_id), address=address)
    except GatewayUnavailable as exc:
        # HAProxy is down or restarting: it restores every live route from live_routes() when it starts.
        log.warning("route_set(%s): the gateway does not answer (%s); it restores routes at start", host_key, exc)


def _activity_from_gateway(now):
    """Move last_activity_at forward from the gateway's per-session counters (idle seconds, open streams)."""
    try:
        counters = gateway_routes.counters_read()
    except Exception as exc:  # no counters this tick: the API heartbeat and the next tick still count
        log.warning("counters_read failed: %s", exc)
        return 0
    _egress_from_gateway(counters, now)
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


def _egress_from_gateway(counters, now):
    """Meter each session's bytes sent to the client since the last tick, from the gateway's cumulative counters.

    Ended sessions too: a WebSocket's bytes reach the counter when it closes, often when the end cuts it, and the
    entry outlives the route (two days). The counted mark and the usage event commit together under the session's
    row lock, so a tick that dies half-way or runs twice counts every byte once."""
    readings = {}
    for session_id, c in counters.items():
        try:
            readings[str(uuid.UUID(session_id))] = int(c.get("bytes_out") or 0)
        except (TypeError, ValueError):
            continue  # not one of ours (another install behind the same gateway)
    marks = Session.objects.filter(pk__in=list(readings)).values_list("pk", "egress_bytes_metered")
    pending = [pk for pk, counted in marks if readings[str(pk)] != counted]
    recorded = 0
    for pk in pending:
        try:
            with transaction.atomic():
                session = Session.objects.select_for_update().select_related("tenant").get(pk=pk)
                counter = readings[str(pk)]
                if counter == session.egress_bytes_metered:
                    continue
                recorded += metering_services.egress_bytes_record(
                    tenant=session.tenant, session_id=str(pk), user_id=session.user_id,
                    workspace_id=session.workspace_id, counted=session.egress_bytes_metered, counter=counter, at=now)
                Session.objects.filter(pk=pk).update(egress_bytes_metered=counter)
        except Exception:  # one session's failure must not stop the others' metering; the next tick retries
            log.exception("metering egress of session %s failed", pk)
    return recorded


def _route_delete(workspace) -> bool:
    """False when a running gateway may still hold the route (its socket timed out, or the command failed)."""
    try:
        gateway_routes.route_delete(host_key=workspace.host_key)
    except Exception as exc:  # the gateway being down must not keep a container claimed
        log.warning("route_delete(%s) failed: %s", workspace.host_key, exc)
        # Not running (no socket, refused): when it starts it restores the live sessions' routes only.
        return isinstance(exc, GatewayUnavailable) and isinstance(exc.__cause__,
                                                                   (FileNotFoundError, ConnectionRefusedError))
    return True


class _RefillNudger:
    """Enqueues pool_fill after claims from a background thread, so no open waits on the broker.

    Nudges for the same template coalesce while one is pending, and the thread waits COALESCE_SECONDS after
    the first before it publishes: a Celery publish costs about 1 ms of CPU here, as much as a whole open, and
    during a burst of opens one publish per process then covers them all (instead of one per open, each
    competing with the opens for the CPU and this process's GIL). Containers take far longer than that to
    start. Best effort by design: if the process dies first, the beat's pool-fill tick (every 15 s) refills.
    """

    COALESCE_SECONDS = 0.25

    def __init__(self):
        self._pending = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._thread = None
        self._pid = None

    def nudge(self, template_id):
        with self._lock:
            self._pending.add(template_id)
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(target=self._run, name="hearth-refill-nudger", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self):
        from workspaces import tasks

        while True:
            self._wake.wait()
            time.sleep(self.COALESCE_SECONDS)
            self._wake.clear()
            with self._lock:
                pending, self._pending = self._pending, set()
            for template_id in pending:
                try:
                    tasks.pool_fill.delay(template_id=template_id)
                except Exception as exc:  # a dead broker delays the refill until the next beat tick
                    log.warning("could not enqueue pool_fill: %s", exc)


_nudger = _RefillNudger()


def _enqueue_pool_fill(template_id):
    """After the current transaction commits, ask a worker to refill the template's pools."""
    transaction.on_commit(lambda: _nudger.nudge(template_id))


# --- who may act ---------------------------------------------------------------------------------


def _membership(*, tenant, user):
    membership = Membership.objects.filter(tenant=tenant, user=user).first() if getattr(user, "pk", None) else None
    if membership is None:
        raise NotFound("No such workspace.")
    return membership


def _can_manage(membership, workspace):
    return workspace.owner_id == membership.user_id or membership.role in (Role.OWNER, Role.ADMIN)


# --- workspaces ----------------------------------------------------------------------------------


def workspace_create(*, tenant, owner, name, template, actor=None):
    """Create a workspace for `owner` from a template slug (or object); its storage directory is made now."""
    actor = actor or owner
    _membership(tenant=tenant, user=owner)
    name = (name or "").strip()
    if not name or len(name) > 80:
        raise ServiceError("A workspace needs a name of 1 to 80 characters.", field="name")
    if isinstance(template, WorkspaceTemplate):
        template_obj = template
    else:
        template_obj = WorkspaceTemplate.objects.filter(slug=str(template or "")).first()
        if template_obj is None:
            known = ", ".join(WorkspaceTemplate.objects.filter(enabled=True).values_list("slug", flat=True))
            raise ServiceError(f"Unknown template '{template}'. Templates: {known}.", code="unknown_template",
                               field="template")
    if not template_obj.enabled:
        raise ServiceError(f"The template '{template_obj.slug}' is disabled.", code="template_disabled",
                           field="template")
    if tenant.status != Tenant.Status.ACTIVE:
        raise Forbidden(f"The tenant is {tenant.status}.", code=f"tenant_{tenant.status}")
    try:
        with transaction.atomic():
            workspace = Workspace.objects.create(tenant=tenant, owner=owner, template=template_obj, name=name)
            workspace.storage_path = str(storage.user_storage_path(
                tenant_slug=tenant.slug, user_id=owner.pk, workspace_id=workspace.pk))
            workspace.save(update_fields=["storage_path"])
            audit_record(tenant=tenant, actor=actor, action="workspace.created", target=f"workspace:{workspace.pk}",
                         data={"name": name, "template": template_obj.slug, "owner": owner.email})
    except IntegrityError:
        raise Conflict(f"You already have a workspace named '{name}'.", code="duplicate_name", field="name")
    return workspace


def workspace_delete(*, workspace, actor, confirm):
    """Delete a workspace and its files. `confirm` must repeat the workspace's name."""
    membership = _membership(tenant=workspace.tenant, user=actor)
    if not _can_manage(membership, workspace):
        raise NotFound("No such workspace.")
    if (confirm or "").strip() != workspace.name:
        raise ServiceError(f"To delete '{workspace.name}' and all its files, confirm with its name.",
                           code="confirmation_required", field="confirm")
    with transaction.atomic():
        workspace = Workspace.objects.select_for_update().get(pk=workspace.pk)
        if workspace.deleted_at is not None:
            raise NotFound("No such workspace.")
        workspace.deleted_at = timezone.now()
        workspace.save(update_fields=["deleted_at"])
        audit_record(tenant=workspace.tenant, actor=actor, action="workspace.deleted",
                     target=f"workspace:{workspace.pk}", data={"name": workspace.name})
    # Deleted first, sessions ended second: an open that comes later is refused, so none can start between the two.
    # (One that passed its checks just before the delete and claims after it is ended by the next reconcile.)
    for session in Session.objects.filter(workspace=workspace, ended_at__isnull=True):
        session_end(session=session, reason=EndReason.DELETED, actor=actor)
    if workspace.storage_path:
        try:
            # Not shutil.rmtree: at any depth the user made, never following their symlinks.
            storage.remove_tree(workspace.storage_path)
        except (OSError, storage.StorageError) as exc:
            log.warning("deleting the files of %s failed: %s", workspace, exc)
    return workspace


# --- open ----------------------------------------------------------------------------------------


@dataclass
class Opened:
    session: Session
    url: str
    token: str
    expires_at: datetime
    resumed: bool = False


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


def workspace_open(*, workspace, user):
    """Give `user` a running container with their workspace's files: warm claim, else a cold start.

    Order: checks (tenant active, template enabled, pool not paused, entitlement), one claim transaction
    (container CLAIMED + Session), then the storage bind, the gateway route and the token. A failure after
    the claim ends the session (reason `failed`) and releases the container: nothing is left half-made.
    """
    workspace = _open_lookup(workspace_id=workspace.pk, user_id=getattr(user, "pk", None))
    if workspace is None or workspace.user_role is None:
        raise NotFound("No such workspace.")
    if workspace.owner_id != user.pk:
        if workspace.user_role in (Role.OWNER, Role.ADMIN):
            raise Forbidden("Only the workspace's owner can open it: its files are theirs.", code="not_owner")
        raise NotFound("No such workspace.")
    tenant, template = workspace.tenant, workspace.template
    if tenant.status != Tenant.Status.ACTIVE:
        raise Forbidden(f"The tenant is {tenant.status}: workspaces cannot be opened.",
                        code=f"tenant_{tenant.status}")
    if not template.enabled:
        raise Conflict(f"The template '{template.slug}' is disabled.", code="template_disabled")
    if template.pool_paused:
        raise Conflict(f"The '{template.slug}' pool is paused by the operators; try again later.",
                       code="pool_paused")
    if workspace.live_session_id is not None:
        live = Session.objects.select_related("container", "workspace", "tenant").filter(
            pk=workspace.live_session_id, ended_at__isnull=True).first()
        opened = _resume(live) if live is not None else None
        if opened is not None:
            return opened
    _entitlement_check(tenant)

    session = _claim(workspace=workspace, user=user)
    if session is None:
        session = _cold_start(workspace=workspace, user=user)
    failpoint("open.claimed")
    try:
        _bind(session)
        failpoint("open.bound")
        _route_set(session)
        url, token, expires_at = _session_url_and_token(session)
    except Exception as exc:
        log.exception("opening %s failed after the claim", workspace)
        session_end(session=session, reason=EndReason.FAILED)
        if isinstance(exc, ServiceError):
            raise
        raise ServiceError(f"The workspace could not be started: {exc}", code="open_failed") from exc
    return Opened(session=session, url=url, token=token, expires_at=expires_at)


def _bind(session, *, resumed=False):
    slot = session.container.slot_path
    # A resumed session is bound already: binding again would hide its files from the running IDE for a moment.
    # (os.path.ismount cannot tell: the user's directory and the slot are on the same file system.) A new
    # session always binds; slot_bind replaces whatever might still be on the slot.
    if resumed and storage.is_mount_point(slot):
        return
    storage.slot_bind(slot=slot, source=session.workspace.storage_path)


def _check_concurrency(tenant, now):
    limit = tenant.plan.max_concurrent_workspaces
    if limit is None:
        return
    # Serialise this tenant's opens so two cannot both take the last slot.
    Tenant.objects.select_for_update().filter(pk=tenant.pk).first()
    running = Session.objects.filter(tenant=tenant, ended_at__isnull=True).count()
    if running >= limit:
        raise Conflict(
            f"The {tenant.plan.name} plan runs {limit} workspace{'s' if limit != 1 else ''} at a time and "
            f"{running} {'are' if running != 1 else 'is'} open: close one or upgrade the plan.",
            code="concurrency_limit")


def _new_session(*, workspace, user, container, now, cold):
    session = Session.objects.create(
        tenant=workspace.tenant, workspace=workspace, user=user, container=container, cold_start=cold,
        started_at=now, last_activity_at=now, metered_until=now,
    )
    # No audit row: the Session is itself the record of who opened what, when (GET /api/v1/sessions).
    session.workspace, session.container = workspace, container
    return session


def _claim(*, workspace, user, cold=False):
    """`cold`: the open waited for this container (a cold open served by one that turned WARM meanwhile)."""
    now = timezone.now()
    if workspace.tenant.plan.max_concurrent_workspaces is None and pool.single_statement_claims():
        return _claim_one_statement(workspace=workspace, user=user, now=now, cold=cold)
    try:
        with transaction.atomic():
            _check_concurrency(workspace.tenant, now)
            container = pool.container_claim(template=workspace.template, now=now)
            if container is None:
                return None
            session = _new_session(workspace=workspace, user=user, container=container, now=now, cold=cold)
            _enqueue_pool_fill(workspace.template_id)
    except IntegrityError:
        # A concurrent open of the same workspace won; the claim rolled back, the container stays WARM.
        return _existing_or_conflict(workspace)
    return session


def _claim_one_statement(*, workspace, user, now, cold=False):
    """The claim and the Session insert as one statement, hence one transaction and one round trip."""
    session = Session(tenant=workspace.tenant, workspace=workspace, user=user, cold_start=cold, started_at=now,
                      last_activity_at=now, metered_until=now)
    try:
        container = pool.container_claim_for_session(template=workspace.template, session=session, now=now)
    except IntegrityError:
        return _existing_or_conflict(workspace)
    if container is None:
        return None
    session.container = container
    sql.loaded(session)
    _enqueue_pool_fill(workspace.template_id)  # autocommit: runs at once, the statement has committed
    return session


def _existing_or_conflict(workspace):
    live = Session.objects.select_related("container", "workspace", "tenant").filter(
        workspace=workspace, ended_at__isnull=True).first()
    if live is None:
        raise Conflict("The workspace is being opened by another request; try again.", code="open_in_progress")
    return live


def _cold_start(*, workspace, user):
    """The pool is empty: start a container for this session, or take one that warms up in the pool meanwhile.

    Starts are limited per node (pool.provision_slot_try): with a free slot on a candidate node (least loaded
    first) this open starts its own container. While every slot is busy it joins the template's line of cold
    opens (pool.ColdOpenLine, first come first served); at the head it takes whichever comes first — a free slot,
    or a container of the template turning WARM (the refill's, or any) through the ordinary claim. Either way the
    session is a cold start (`cold_start=True`): the user waited for a container.
    """
    template = workspace.template
    deadline = time.monotonic() + settings.WORKSPACES_COLD_START_WAIT
    line = pool.ColdOpenLine(template)
    candidates, candidates_at, down, last_error = None, 0.0, set(), None
    try:
        while True:
            if line.entered:
                session = _claim(workspace=workspace, user=user, cold=True)
                if session is not None:
                    line.leave()
                    return session
            if candidates is None or time.monotonic() - candidates_at > 5.0:
                candidates, candidates_at = pool.placement_candidates(template), time.monotonic()
            usable = [node for node in candidates if node.pk not in down]
            if not usable:
                if last_error is not None:
                    raise last_error  # every node with room failed to answer
                raise pool.NoCapacity(f"No node has room for another '{template.slug}' workspace; try again shortly.")
            full = 0
            for node in usable:
                slot = pool.provision_slot_try(node)
                if slot is None:
                    continue
                line.leave()  # the next open moves up and may take the next slot while this one starts
                session, outcome = _cold_start_with_slot(workspace, user, node, slot)
                if session is not None:
                    return session
                full += outcome == "full"
                if isinstance(outcome, pool.NodeUnavailable):
                    down.add(node.pk)
                    last_error = outcome
            if full and full == len(usable):
                raise pool.NoCapacity(f"No node has room for another '{template.slug}' workspace; try again shortly.")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise pool.PoolBusy(f"No '{template.slug}' container came free within "
                                    f"{settings.WORKSPACES_COLD_START_WAIT:.0f} s; try again shortly.")
            if line.entered:
                pool.pool_changed_wait(min(remaining, settings.WORKSPACES_POOL_POLL_INTERVAL))
            elif not line.enter(timeout=remaining):  # every slot is busy: wait for our turn, at no cost
                raise pool.PoolBusy(f"No '{template.slug}' container came free within "
                                    f"{settings.WORKSPACES_COLD_START_WAIT:.0f} s; try again shortly.")
    finally:
        line.leave()


def _cold_start_with_slot(workspace, user, node, slot):
    """(session, outcome): with a slot of `node` held, start a container there for the session; releases the slot.

    outcome "full": no room on the node after all; a NodeUnavailable: the engine did not answer.
    """
    try:
        session = _cold_start_on(workspace=workspace, user=user, node=node)
    except pool.NodeUnavailable as exc:
        return None, exc
    finally:
        pool.provision_slot_release(node, slot)
    return session, ("started" if session is not None else "full")


def _cold_start_on(*, workspace, user, node):
    """Start a container on `node` (the caller holds one of its slots) and open the session on it; None: no room."""
    template = workspace.template
    container = pool.container_provision(template=template, node=node, for_warm=False, slot_held=True)
    if container is None:
        return None
    now = timezone.now()
    try:
        with transaction.atomic():
            _check_concurrency(workspace.tenant, now)
            if not Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(
                state=State.CLAIMED, ready_at=now, claimed_at=now
            ):
                raise ServiceError("The new container was given up while it started.", code="open_failed")
            container.state = State.CLAIMED
            session = _new_session(workspace=workspace, user=user, container=container, now=now, cold=True)
            _enqueue_pool_fill(template.pk)
    except (ServiceError, IntegrityError) as exc:
        Container.objects.filter(pk=container.pk, state__in=(State.PROVISIONING, State.CLAIMED)).update(
            state=State.RELEASING, released_at=timezone.now())
        pool.container_release(container)
        if isinstance(exc, IntegrityError):
            return _existing_or_conflict(workspace)
        raise
    return session


def _resume(session):
    """The workspace is already open: the same session (and container) with a fresh token; None if the session
    ended since it was read (its container is being released: the caller opens a new one)."""
    now = timezone.now()
    with transaction.atomic():
        # The row stays locked while binding and routing: a close (session_end locks it first) commits either
        # before, and the container is neither bound again nor routed while it is released, or after, and its
        # release unbinds this bind and deletes this route.
        if not Session.objects.filter(pk=session.pk, ended_at__isnull=True).update(last_activity_at=now):
            return None
        session.last_activity_at = now
        _bind(session, resumed=True)
        _route_set_locked(host_key=session.workspace.host_key, session_id=session.pk, address=session.container.address)
    url, token, expires_at = _session_url_and_token(session)
    return Opened(session=session, url=url, token=token, expires_at=expires_at, resumed=True)


# --- sessions ------------------------------------------------------------------------------------


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
    membership = _membership(tenant=session.tenant, user=actor)
    if session.user_id != actor.pk and membership.role not in (Role.OWNER, Role.ADMIN):
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
        _enqueue_pool_fill(template_id)
    failpoint("release.committed")
    if not _route_delete(session.workspace):
        # The route may still lead to the container's address: removed now, the address would go to the next
        # container while the ended session's tokens still route there. The row stays RELEASING; the reconciler
        # deletes stale routes first, then finishes the release.
        return session
    container = Container.objects.select_related("node", "template").get(pk=session.container_id)
    try:
        pool.container_release(container)
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


@offboarding.exporter("workspaces")
def _export(tenant):
    return [
        {"name": w.name, "template": w.template.slug, "owner": w.owner.email, "created_at": w.created_at.isoformat(),
         "deleted_at": w.deleted_at.isoformat() if w.deleted_at else None,
         "sessions": [{"started_at": s.started_at.isoformat(),
                       "ended_at": s.ended_at.isoformat() if s.ended_at else None,
                       "end_reason": s.end_reason} for s in w.sessions.order_by("started_at")]}
        for w in Workspace.objects.filter(tenant=tenant).select_related("template", "owner")
    ]


# --- operators -----------------------------------------------------------------------------------


def node_drain(*, node, actor):
    """Stop placing on `node`, end its sessions (reason `drained`) and remove its warm containers."""
    with transaction.atomic():
        node = Node.objects.select_for_update().get(pk=node.pk)
        node.draining = True
        node.save(update_fields=["draining"])
    for session in Session.objects.filter(container__node=node, ended_at__isnull=True):
        session_end(session=session, reason=EndReason.DRAINED, actor=actor)
    warm = list(Container.objects.filter(node=node, state=State.WARM).select_related("node", "template"))
    for container in warm:
        if Container.objects.filter(pk=container.pk, state=State.WARM).update(
                state=State.RELEASING, released_at=timezone.now()):
            pool.container_release(container)
    for template_id in {c.template_id for c in warm}:
        with transaction.atomic():
            _enqueue_pool_fill(template_id)
    log.info("node %s drained by %s", node.name, actor)
    return node


def node_undrain(*, node, actor):
    Node.objects.filter(pk=node.pk).update(draining=False)
    node.draining = False
    with transaction.atomic():
        _enqueue_pool_fill(None)
    return node


def pool_pause(*, template, paused, actor):
    """Pause (no claims, no refills) or resume a template's pool."""
    WorkspaceTemplate.objects.filter(pk=template.pk).update(pool_paused=paused)
    template.pool_paused = paused
    log.info("pool %s %s by %s", template.slug, "paused" if paused else "resumed", actor)
    if not paused:
        with transaction.atomic():
            _enqueue_pool_fill(template.pk)
    return template


def reconcile(*, now=None):
    # Routes first: a RELEASING container whose route_delete failed is removed below only once no route leads to it.
    gateway_routes_sync()
    result = pool.reconcile(now=now, end_session=lambda session, reason: session_end(session=session, reason=reason))
    # An open that passed its checks just before a delete may have claimed after the delete ended the sessions.
    for session in Session.objects.filter(ended_at__isnull=True, workspace__deleted_at__isnull=False):
        session_end(session=session, reason=EndReason.DELETED)
        result["sessions_ended"] += 1
    gateway_routes_sync()
    return result


def gateway_routes_sync():
    """Make the gateway's route map match the live sessions: add what a failed route_set missed, delete
    what a failed route_delete left. Returns (added, deleted); (0, 0) when the gateway does not answer.

    The map is read before the database, so a session opened in between is in the database snapshot
    (and kept), and a route missing from the snapshot belongs to a session that had already ended.
    """
    try:
        present = {route.host_key: route for route in gateway_routes.routes_list()}
    except GatewayUnavailable:
        return 0, 0
    wanted = {host_key: (session_id, address) for host_key, session_id, address in selectors.live_routes()}
    added = deleted = 0
    for host_key, (session_id, address) in wanted.items():
        route = present.get(host_key)
        if route is None or (route.session_id, route.address) != (session_id, address):
            # The snapshot may be older than an end that has deleted this route since.
            added += _route_set_while_live(host_key=host_key, session_id=session_id, address=address)
    for host_key in present.keys() - wanted.keys():
        gateway_routes.route_delete(host_key=host_key)
        deleted += 1
    return added, deleted
