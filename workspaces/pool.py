"""The warm pool: placement, provisioning, the claim transaction, container release and the reconciler.

Every step that talks to an engine first commits the row that describes it (PROVISIONING before create,
RELEASING before remove), so a worker killed at any point leaves a row the reconciler can finish.
"""
import http.client
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, connections, transaction
from django.db.models import Count, Q, Sum
from django.utils import timezone

from config import db
from core import sql
from tenants.exceptions import Conflict, ServiceError
from workspaces import runtime as rt
from workspaces import storage
from workspaces.failpoints import failpoint
from workspaces.models import Container, Node, Session, WorkspaceTemplate

log = logging.getLogger(__name__)

State = Container.State


class NoCapacity(Conflict):
    code = "no_capacity"


class NodeUnavailable(ServiceError):
    status_code = 503
    code = "node_unavailable"


class PoolBusy(ServiceError):
    """Every provisioning slot stayed busy and no container warmed up while a cold open waited."""

    status_code = 503
    code = "pool_busy"


class ProvisionFailed(ServiceError):
    """The engine answered but the container did not start (image missing, port never answered)."""

    status_code = 503
    code = "provision_failed"


def instance():
    return settings.HEARTH_INSTANCE


def _provision_timeout():
    return timedelta(seconds=settings.WORKSPACES_PROVISION_TIMEOUT)


# --- nodes and placement -------------------------------------------------------------------------


def node_ensure_default():
    """A fresh install has no Node: register the local engine (settings.DOCKER_HOST) so the first open works."""
    if Node.objects.exists():
        return None
    cpus = (os.cpu_count() or 2) * settings.WORKSPACES_LOCAL_CPU_OVERCOMMIT
    memory_mb = _host_memory_mb() * settings.WORKSPACES_LOCAL_MEMORY_OVERCOMMIT
    node, _ = Node.objects.get_or_create(
        name="local",
        defaults=dict(engine_url=settings.DOCKER_HOST, cpus=cpus, memory_mb=int(memory_mb), max_containers=100),
    )
    return node


def _host_memory_mb():
    try:
        with open("/proc/meminfo") as f:
            return int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        return 4096


def usable_nodes():
    return Node.objects.filter(enabled=True, draining=False).order_by("pk")


@dataclass
class NodeLoad:
    node: Node
    containers: int
    cpus: float
    memory_mb: int

    def room_for(self, template):
        return (
            self.containers < self.node.max_containers
            and self.cpus + float(template.cpus) <= float(self.node.cpus)
            and self.memory_mb + template.memory_mb <= self.node.memory_mb
        )

    @property
    def load(self):
        return max(
            self.containers / max(self.node.max_containers, 1),
            self.cpus / max(float(self.node.cpus), 0.01),
            self.memory_mb / max(self.node.memory_mb, 1),
        )


def node_loads(nodes):
    usage = {
        row["node"]: row
        for row in Container.objects.filter(node__in=nodes, state__in=Container.ACTIVE_STATES)
        .values("node")
        .annotate(n=Count("pk"), cpus=Sum("template__cpus"), mem=Sum("template__memory_mb"))
    }
    return [
        NodeLoad(node=n, containers=usage.get(n.pk, {}).get("n", 0), cpus=float(usage.get(n.pk, {}).get("cpus") or 0),
                 memory_mb=usage.get(n.pk, {}).get("mem") or 0)
        for n in nodes
    ]


def placement_candidates(template):
    """Usable nodes with room for one more container of `template`, least loaded first."""
    node_ensure_default()
    loads = [nl for nl in node_loads(list(usable_nodes())) if nl.room_for(template)]
    return [nl.node for nl in sorted(loads, key=lambda nl: (nl.load, nl.node.pk))]


# --- provisioning slots --------------------------------------------------------------------------
#
# An engine starts containers at a fixed rate (here about 4-8 per second on 2 cores, bench/cold_phases.py); starting
# 47 at once gets them all late, at once, while the same number in a stream of a few at a time hands the first ones
# out within a second and uses the engine as fully. So every start on a node (pool fill, cold open, any process)
# holds one of the node's WORKSPACES_PROVISION_CONCURRENCY slots: a session advisory lock, released by the server if
# the process dies.

_SLOT_LOCK_CLASS = 0x4845  # advisory lock key space of Hearth's provisioning slots: (class, node pk * 1024 + slot)
_LINE_LOCK_CLASS = 0x4846  # (class, template pk): the head of the line of cold opens of a template
# Wakes cold opens waiting in this process: a slot was released or a container became WARM here.
_pool_changed = threading.Condition()


def provision_concurrency():
    return max(1, int(settings.WORKSPACES_PROVISION_CONCURRENCY))


def provision_slot_try(node):
    """Take a free provisioning slot of `node` without waiting: its number, or None when all are busy."""
    with connection.cursor() as cursor:
        # Rows are pulled one at a time through the LIMIT: the first lock that is free is the only one taken.
        cursor.execute(
            "SELECT s FROM generate_series(0, %s) AS s WHERE pg_try_advisory_lock(%s, %s * 1024 + s) LIMIT 1",
            [provision_concurrency() - 1, _SLOT_LOCK_CLASS, node.pk])
        row = cursor.fetchone()
    return None if row is None else row[0]


def _session_locks_drop(what, exc):
    """An unlock failed: the connection is gone (its locks with it) or sits in an aborted transaction (its locks
    held for as long as a persistent connection lives). Close it either way, so the server drops them now."""
    log.warning("%s: %s; closing the database connection to drop its locks", what, exc)
    connection.close()


def provision_slot_release(node, slot):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s * 1024 + %s)", [_SLOT_LOCK_CLASS, node.pk, slot])
    except DatabaseError as exc:
        _session_locks_drop(f"releasing provisioning slot {slot} of {node}", exc)
    pool_changed_notify()


def pool_changed_notify():
    with _pool_changed:
        _pool_changed.notify()  # one waiter: one slot or one container to hand out


def pool_changed_wait(timeout):
    """Sleep until this process frees a slot or warms a container, or `timeout` s (others' changes: the next poll)."""
    with _pool_changed:
        _pool_changed.wait(timeout)


def provision_slot_wait(node, *, timeout):
    """Wait up to `timeout` s for a provisioning slot of `node`: its number, or None (background fills)."""
    deadline = time.monotonic() + timeout
    while True:
        slot = provision_slot_try(node)
        remaining = deadline - time.monotonic()
        if slot is not None or remaining <= 0:
            return slot
        pool_changed_wait(min(remaining, 0.25))


def _advisory_lock_wait(key1, key2, timeout):
    """Block up to `timeout` s on a session advisory lock (PostgreSQL queues waiters first come, first served)."""
    try:
        with transaction.atomic(), connection.cursor() as cursor:  # a transaction for the local lock_timeout
            cursor.execute("SELECT current_setting('lock_timeout'), set_config('lock_timeout', %s, true)",
                           [f"{max(1, int(timeout * 1000))}ms"])
            previous = cursor.fetchone()[0]
            cursor.execute("SELECT pg_advisory_lock(%s, %s)", [key1, key2])
            # Inside a caller's transaction (a savepoint here) the setting would outlive this block: put it back.
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", [previous])
    except OperationalError as exc:
        if getattr(getattr(exc, "__cause__", None), "sqlstate", None) != "55P03":  # not lock_not_available
            raise
        return False
    return True  # a session lock: it outlives the transaction that took it


class ColdOpenLine:
    """The line of cold opens of one template waiting for a container, first come first served, across processes.

    Only the open at the head looks for a free slot or a WARM container (every WORKSPACES_POOL_POLL_INTERVAL); the
    rest wait inside PostgreSQL on the template's line lock, costing nothing. The head leaves the line as soon as it
    has a slot or a container, so the next open moves up while it starts.
    """

    def __init__(self, template):
        self.template = template
        self.entered = False

    def enter(self, *, timeout):
        """Wait up to `timeout` s to be the head of the line; False when the time ran out."""
        if timeout <= 0:
            return False
        self.entered = _advisory_lock_wait(_LINE_LOCK_CLASS, self.template.pk, timeout)
        return self.entered

    def leave(self):
        if not self.entered:
            return
        self.entered = False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [_LINE_LOCK_CLASS, self.template.pk])
        except DatabaseError as exc:
            _session_locks_drop(f"leaving the cold-open line of {self.template}", exc)


# --- provisioning --------------------------------------------------------------------------------


def _reserve(*, template, node, for_warm):
    """Commit a PROVISIONING row on `node` if capacity (and, for the pool, the warm target) allows; else None."""
    with transaction.atomic():
        # Lock order: template, then node (pk order within each table); refills on one node serialise here.
        template = WorkspaceTemplate.objects.select_for_update().get(pk=template.pk)
        node = Node.objects.select_for_update().get(pk=node.pk)
        if not node.enabled or node.draining:
            return None
        if Container.objects.filter(template=template, state__in=Container.ACTIVE_STATES).count() >= (
            template.max_containers
        ):
            return None
        if not node_loads([node])[0].room_for(template):
            return None
        if for_warm:
            ready = Container.objects.filter(
                template=template, node=node, state__in=(State.PROVISIONING, State.WARM)
            ).count()
            if ready >= template.warm_target:
                return None
        container = Container.objects.create(node=node, template=template, state=State.PROVISIONING)
        container.name = f"hearth-{instance()}-c{container.pk}"
        container.slot_path = str(storage.slot_root() / _slot_key(container.pk))
        container.save(update_fields=["name", "slot_path"])
        # Before the commit: no reconciler can see the row without its provisioner's lock.
        _provisioner_lock(container.pk)
    return container


# A provisioning holds a PostgreSQL advisory lock (session level, keyed by the row) from the commit of its
# PROVISIONING row until the row is WARM, FAILED or handed to the cold start. PostgreSQL drops it the moment the
# provisioning process dies (SIGKILL, OOM), so the reconciler tells a dead provisioning from a slow one at its next
# tick instead of after WORKSPACES_PROVISION_TIMEOUT (which stays a fallback).
_PROVISIONER_LOCK = 0x48454152  # advisory lock class of this module ("HEAR")
_PROVISIONER_DIED = "its provisioning process died"
# A PROVISIONING row with ready_at was started for a cold start and is claimed right after; unclaimed this long,
# its process is gone (the cold start that loses the race to the reconciler fails its open; the user retries).
_COLD_CLAIM_GRACE = timedelta(seconds=10)


def _provisioner_key(pk):
    return [_PROVISIONER_LOCK, pk % 2**31]


def _provisioner_lock(pk):
    # Never waits: if another session held this key (2**31 rows later), the row would only look alive.
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s, %s)", _provisioner_key(pk))


def _provisioner_unlock(pk):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", _provisioner_key(pk))
    except DatabaseError as exc:
        _session_locks_drop(f"releasing the provisioner lock of c{pk}", exc)


def _provisioners_alive():
    """Lock keys of provisionings whose process is alive.

    Read after the rows: a row in the caller's snapshot committed with its lock already held.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s "
                       "AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = "
                       "current_database())", [_PROVISIONER_LOCK])
        return {int(row[0]) for row in cursor.fetchall()}


def _slot_key(pk):
    return f"c{pk}"


def _spec(container):
    template = container.template
    env = {str(k): str(v) for k, v in (template.environment or {}).items()}
    return rt.ContainerSpec(
        name=container.name,
        image=template.image,
        internal_port=template.internal_port,
        cpus=float(template.cpus),
        memory_mb=template.memory_mb,
        pids_limit=template.pids_limit,
        environment=env,
        labels={
            "hearth.instance": instance(),
            "hearth.node": container.node.name,
            "hearth.template": template.slug,
            "hearth.container": str(container.pk),
        },
        slot_path=container.slot_path,
    )


def _start(container):
    """Create and start the engine container of a PROVISIONING row; returns when its port answers."""
    storage.slot_create(_slot_key(container.pk))
    runtime = rt.runtime_for(container.node)
    created = runtime.create(_spec(container))
    failpoint("provision.created")
    Container.objects.filter(pk=container.pk).update(engine_id=created.engine_id, address=created.address or "")
    container.engine_id, container.address = created.engine_id, created.address or ""
    if not runtime.wait_ready(created, timeout=settings.WORKSPACES_READY_TIMEOUT):
        raise rt.RuntimeError_(f"the container did not answer on port {container.template.internal_port} "
                               f"within {settings.WORKSPACES_READY_TIMEOUT} s")
    _warm_up(container)


def _warm_up(container):
    """Ask the IDE for its first page once, before anyone claims the container.

    code-server loads its VS Code server lazily, on the first page request: 0.3 s here unloaded, more under load,
    which every user's open paid. Checked harmless before the late bind: the user's settings, extensions and files
    still apply (tests/workspaces/test_images.py). Best effort: a container whose port answers is ready either way.
    """
    path = settings.WORKSPACES_WARMUP_PATH
    if not path or not container.address:
        return
    host, port = container.address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=settings.WORKSPACES_READY_TIMEOUT)
    try:
        conn.request("GET", path)
        conn.getresponse().read()
    except (OSError, http.client.HTTPException) as exc:
        log.info("warm-up GET %s of %s failed: %s", path, container, exc)
    finally:
        conn.close()


def container_provision(*, template, node, for_warm=True, slot_held=False):
    """Start one container on `node`. Returns the row (WARM, or still PROVISIONING when not for_warm) or None.

    None: no room, the pool is already at target, or no provisioning slot of the node came free within
    WORKSPACES_READY_TIMEOUT. Raises NodeUnavailable / ServiceError when the engine fails; the row is then
    FAILED and nothing is left on the engine. `slot_held`: the caller holds one of the node's slots already.
    A row returned for a cold start has `ready_at` set: claim it at once (the reconciler fails a started row
    left unclaimed for _COLD_CLAIM_GRACE).
    """
    if not slot_held:
        slot = provision_slot_wait(node, timeout=settings.WORKSPACES_READY_TIMEOUT)
        if slot is None:
            log.info("no provisioning slot of %s came free; %s not started", node, template)
            return None
        try:
            return container_provision(template=template, node=node, for_warm=for_warm, slot_held=True)
        finally:
            provision_slot_release(node, slot)
    container = _reserve(template=template, node=node, for_warm=for_warm)
    if container is None:
        return None
    try:
        return _provision(container, template=template, node=node, for_warm=for_warm)
    finally:
        _provisioner_unlock(container.pk)


def _provision(container, *, template, node, for_warm):
    failpoint("provision.reserved")
    try:
        _start(container)
    except rt.RuntimeUnavailable as exc:
        _provision_failed(container, exc)
        Node.objects.filter(pk=node.pk).update(last_error=f"{timezone.now():%Y-%m-%d %H:%M:%S} {exc}"[:2000])
        raise NodeUnavailable(f"The Docker engine of node '{node.name}' does not answer ({node.engine_url}): {exc}",
                              extra={"node": node.name}) from exc
    except Exception as exc:
        _provision_failed(container, exc)
        raise ProvisionFailed(f"Could not start a '{template.slug}' container on node '{node.name}': {exc}") from exc
    failpoint("provision.started")
    if not for_warm:
        # Started: the row is the cold start's to claim now, so the reconciler must not take it for abandoned
        # once the provisioner lock is released (it fails only PROVISIONING rows without ready_at).
        container.ready_at = timezone.now()
        Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(ready_at=container.ready_at)
        failpoint("provision.handed")
        return container
    now = timezone.now()
    if not Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(
        state=State.WARM, ready_at=now
    ):
        # The reconciler gave up on it while it started: it is not ours to hand out any more.
        container_release(container)
        return None
    container.state, container.ready_at = State.WARM, now
    pool_changed_notify()
    return container


def _provision_failed(container, exc):
    log.warning("provisioning %s failed: %s", container, exc)
    Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(
        state=State.FAILED, last_error=str(exc)[:2000]
    )
    _engine_cleanup(container)


def _engine_cleanup(container):
    """Remove the engine container and the slot of a row; best effort (the reconciler retries)."""
    try:
        runtime = rt.runtime_for(container.node)
        if container.engine_id:
            runtime.remove(container.engine_id)
        else:
            # Killed between create and saving the id: find it by its label.
            for found in runtime.list(instance=instance()):
                if found.labels.get("hearth.container") == str(container.pk):
                    runtime.remove(found.engine_id)
    except (rt.RuntimeUnavailable, rt.RuntimeError_) as exc:
        log.warning("could not remove the engine container of %s: %s", container, exc)
        removed = False
    else:
        removed = True
    if container.slot_path:
        # Host-side and independent of the engine: the slot goes even if the engine is away.
        storage.slot_remove(Path(container.slot_path))
    return removed


def pool_fill(*, template_id=None):
    """Top up every (template, node) pool to warm_target. Returns the number of containers started.

    The missing containers of a pool start side by side, as many at a time as the node has provisioning slots
    (one after another inside a transaction, where other threads would not see the rows).
    """
    node_ensure_default()
    templates = WorkspaceTemplate.objects.filter(enabled=True, pool_paused=False).order_by("pk")
    if template_id is not None:
        templates = templates.filter(pk=template_id)
    started = 0
    for node in usable_nodes():
        for template in templates:
            if _failing_recently(template, node):
                continue
            missing = template.warm_target - Container.objects.filter(
                template=template, node=node, state__in=(State.PROVISIONING, State.WARM)
            ).count()
            if missing <= 0:
                continue
            workers = min(missing, provision_concurrency())
            # Side by side only outside a transaction: the threads must see each other's rows.
            if workers == 1 or transaction.get_connection().in_atomic_block:
                started += _fill_worker(template, node, missing, threading.Event())
                continue
            stop = threading.Event()
            with ThreadPoolExecutor(workers, thread_name_prefix="hearth-fill") as executor:
                futures = [executor.submit(_fill_worker, template, node, missing, stop, own_db=True)
                           for _ in range(workers)]
                started += sum(f.result() for f in futures)
    return started


def _fill_worker(template, node, limit, stop, own_db=False):
    """Start containers for one pool until it is at target (the reservation rechecks it), `limit` or a failure."""
    started = 0
    try:
        while started < limit and not stop.is_set():
            try:
                container = container_provision(template=template, node=node, for_warm=True)
            except NodeUnavailable:
                stop.set()  # try this node again on the next tick
                break
            except ServiceError as exc:
                log.warning("pool fill of %s on %s: %s", template, node, exc.message)
                stop.set()
                break
            if container is None:
                break
            started += 1
    finally:
        if own_db:
            connections.close_all()  # this thread's connection (and its advisory locks) ends with it
    return started


def _failing_recently(template, node):
    """The newest container of this pool failed a moment ago: wait a little before the next attempt."""
    last = Container.objects.filter(template=template, node=node).order_by("-pk").values_list(
        "state", "updated_at", "last_error").first()
    # A provisioning whose process died says nothing about the engine or the image: no reason to wait.
    if last is None or last[0] != State.FAILED or last[2] == _PROVISIONER_DIED:
        return False
    return last[1] > timezone.now() - timedelta(seconds=settings.WORKSPACES_FAILURE_BACKOFF)


# --- the claim -----------------------------------------------------------------------------------


# The states are literals, not parameters: a prepared statement then still uses the partial index on WARM rows.
_CLAIM_SQL = f"""UPDATE {Container._meta.db_table} SET state = '{State.CLAIMED.value}', claimed_at = %s, updated_at = %s
    WHERE id = (
        SELECT c.id FROM {Container._meta.db_table} c JOIN {Node._meta.db_table} n ON n.id = c.node_id
        WHERE c.template_id = %s AND c.state = '{State.WARM.value}' AND n.enabled AND NOT n.draining
        ORDER BY c.id LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING id, node_id, slot_path, address, name, engine_id"""


def single_statement_claims():
    """Outside a transaction the claim and its session can be one statement (see below)."""
    return not transaction.get_connection().in_atomic_block


def container_claim_for_session(*, template, session, now):
    """Claim a WARM container and insert `session` on it in ONE statement (autocommit: one transaction).

    Two data-modifying CTEs: the UPDATE takes the row with FOR UPDATE SKIP LOCKED; the INSERT adds the
    session only if a row was taken. A unique violation (the workspace already has a live session) fails
    the whole statement, so the container stays WARM. Returns the CLAIMED Container or None.
    """
    row = db.fetchone(_CLAIM_FOR_SESSION_SQL, [now, now, template.pk, session.pk, session.tenant_id,
                                                 session.workspace_id, session.user_id, session.cold_start, now,
                                                 now, now])
    return _claimed_container(row, template, now)


_CLAIM_FOR_SESSION_SQL = f"""
    WITH claimed AS ({_CLAIM_SQL}),
    opened AS (
        INSERT INTO {Session._meta.db_table} (id, tenant_id, workspace_id, user_id, container_id, cold_start,
                                              started_at, last_activity_at, ended_at, end_reason, metered_until)
        SELECT %s, %s, %s, %s, claimed.id, %s, %s, %s, NULL, '', %s FROM claimed
        RETURNING container_id
    )
    SELECT claimed.id, claimed.node_id, claimed.slot_path, claimed.address, claimed.name, claimed.engine_id
    FROM claimed JOIN opened ON opened.container_id = claimed.id"""


def _claimed_container(row, template, now):
    if row is None:
        return None
    container = Container(pk=row[0], node_id=row[1], template_id=template.pk, slot_path=row[2], address=row[3],
                          name=row[4], engine_id=row[5], state=State.CLAIMED, claimed_at=now)
    container.template = template
    return sql.loaded(container)


def container_claim(*, template, now):
    """Inside the caller's transaction: take one WARM container of `template` (CLAIMED), or None.

    One statement: lock the oldest WARM row of a usable node with FOR UPDATE SKIP LOCKED (so concurrent claims
    take different rows without waiting), mark it CLAIMED, return it.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("container_claim must run inside the transaction that creates the session")
    return _claimed_container(db.fetchone(_CLAIM_SQL, [now, now, template.pk]), template, now)


# --- release -------------------------------------------------------------------------------------


def container_release(container):
    """Unbind the slot, remove the engine container and mark the row REMOVED. Idempotent.

    The caller has already moved the row out of WARM/CLAIMED (to RELEASING, FAILED or LOST) in a committed
    transaction; on an engine error the row stays as it is and the reconciler retries.
    """
    if container.slot_path:
        storage.slot_unbind(slot=Path(container.slot_path))
    if not _engine_cleanup(container):
        Container.objects.filter(pk=container.pk).update(last_error="release: the engine did not answer")
        return False
    Container.objects.filter(pk=container.pk, state=State.RELEASING).update(
        state=State.REMOVED, removed_at=timezone.now()
    )
    return True


# --- reconciler ----------------------------------------------------------------------------------


def reconcile(*, now=None, end_session=None):
    """Make the database and every engine agree. Returns a report of what was fixed.

    `end_session(session, reason)` ends a session whose container is gone (workspaces.services passes its
    session_end so usage is metered and routes are deleted).
    """
    now = now or timezone.now()
    report = {"orphans_removed": 0, "lost": 0, "failed": 0, "released": 0, "slots_removed": 0,
              "sessions_ended": 0, "nodes_unreachable": []}
    for node in Node.objects.filter(enabled=True).order_by("pk"):
        try:
            engine = rt.runtime_for(node).list(instance=instance())
        except rt.RuntimeUnavailable as exc:
            Node.objects.filter(pk=node.pk).update(last_error=f"{now:%Y-%m-%d %H:%M:%S} reconcile: {exc}"[:2000])
            report["nodes_unreachable"].append(node.name)
            continue
        Node.objects.filter(pk=node.pk).update(last_seen_at=now, last_error="")
        by_pk = {}
        for found in engine:
            if found.labels.get("hearth.node", node.name) == node.name:
                by_pk.setdefault(found.labels.get("hearth.container", ""), []).append(found)
        rows = list(Container.objects.filter(node=node, state__in=Container.ACTIVE_STATES).select_related(
            "node", "template"))
        alive = _provisioners_alive() if any(row.state == State.PROVISIONING for row in rows) else None
        for row in rows:
            found = by_pk.pop(str(row.pk), [])
            if row.state == State.PROVISIONING:
                abandoned = _provisioning_abandoned(row, now=now, alive=alive)
                if abandoned and Container.objects.filter(abandoned[0], pk=row.pk, state=State.PROVISIONING).update(
                    state=State.FAILED, last_error=abandoned[1]
                ):
                    _engine_cleanup(row)
                    report["failed"] += 1
                continue
            if row.state == State.RELEASING:
                report["released"] += int(container_release(row))
                continue
            running = any(f.status == "running" for f in found)
            if not running:
                if Container.objects.filter(pk=row.pk, state=row.state).update(
                    state=State.LOST, last_error="missing or stopped on the engine"
                ):
                    report["lost"] += 1
                    for session in Session.objects.filter(container=row, ended_at__isnull=True):
                        if end_session is not None:
                            end_session(session, Session.EndReason.LOST)
                            report["sessions_ended"] += 1
                    _engine_cleanup(row)
                continue
            if row.state == State.CLAIMED and not Session.objects.filter(container=row, ended_at__isnull=True).exists():
                # Its session ended but the release did not happen (worker killed): finish it.
                if Container.objects.filter(pk=row.pk, state=State.CLAIMED, claimed_at__lt=now - timedelta(
                        seconds=30)).update(state=State.RELEASING, released_at=now):
                    report["released"] += int(container_release(row))
        runtime = rt.runtime_for(node)
        for leftovers in by_pk.values():
            for found in leftovers:
                try:
                    runtime.remove(found.engine_id)
                    report["orphans_removed"] += 1
                except (rt.RuntimeUnavailable, rt.RuntimeError_) as exc:
                    log.warning("could not remove orphan %s: %s", found.name, exc)
    # Dead rows whose engine container the reconciler could not reach before.
    for row in Container.objects.filter(state__in=(State.FAILED, State.LOST), removed_at__isnull=True,
                                        node__enabled=True).select_related("node"):
        if _engine_cleanup(row):
            Container.objects.filter(pk=row.pk).update(removed_at=now)
    # Live sessions on a container that is no longer claimed (lost, removed) end too.
    if end_session is not None:
        for session in Session.objects.filter(ended_at__isnull=True).exclude(container__state=State.CLAIMED):
            end_session(session, Session.EndReason.LOST)
            report["sessions_ended"] += 1
    report["slots_removed"] = _stale_slots_remove()
    return report


def _provisioning_abandoned(row, *, now, alive):
    """(condition to recheck in the update, reason) if the provisioning of this PROVISIONING row is over, else None.

    `alive`: lock keys of the live provisioners (None: unknown). The condition makes the update a no-op if the
    row moved on since it was read (WARM, or started for its cold start).
    """
    if row.created_at < now - _provision_timeout():
        return Q(), "provisioning did not finish in time (worker lost?)"
    if row.ready_at is None and alive is not None and _provisioner_key(row.pk)[1] not in alive:
        return Q(ready_at__isnull=True), _PROVISIONER_DIED
    if row.ready_at is not None and row.ready_at < now - _COLD_CLAIM_GRACE:
        # Started for a cold start, whose claim follows within milliseconds: that process died.
        return Q(ready_at=row.ready_at), "started for a cold start that never claimed it"
    return None


def _stale_slots_remove():
    root = storage.slot_root()
    # Directories first, rows second: a slot seen here belongs to a row already committed (the row commits
    # before its slot is made), so a provisioning that starts meanwhile never loses its fresh slot.
    entries = [entry for entry in root.iterdir() if entry.is_dir()] if root.exists() else []
    live = {_slot_key(pk) for pk in Container.objects.filter(state__in=Container.ACTIVE_STATES).values_list(
        "pk", flat=True)}
    removed = 0
    for entry in entries:
        if entry.name.startswith("c") and entry.name not in live:
            storage.slot_remove(entry)
            removed += 1
    return removed


# --- what admin and the portal show --------------------------------------------------------------


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
                "warm": c.get(State.WARM, 0), "provisioning": c.get(State.PROVISIONING, 0),
                "claimed": c.get(State.CLAIMED, 0), "releasing": c.get(State.RELEASING, 0),
                "target": template.warm_target if node.enabled and not node.draining else 0,
                "claims_warm": warm, "claims_cold": cold,
                "hit_rate": (warm / (warm + cold)) if warm + cold else None,
            })
    return rows
