"""Starting and removing containers: the PROVISIONING row and its provisioner lock, the engine container, the warm
pool's refill (and the nudge that enqueues it after claims), and a container's release.

Every step that talks to an engine first commits the row that describes it (PROVISIONING before create,
RELEASING before remove), so a worker killed at any point leaves a row the reconciler can finish.
"""
import http.client
import logging
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, connections, transaction
from django.db.models import Q
from django.utils import timezone

from core.background import BackgroundQueue
from tenants.exceptions import ServiceError
from workspaces import egress, network, storage
from workspaces import runtime as rt
from workspaces.failpoints import failpoint
from workspaces.models import Container, Node, WorkspaceTemplate
from workspaces.pool import health
from workspaces.pool.demand import surplus
from workspaces.pool.placement import (
    node_ensure_default,
    node_loads,
    pool_changed_notify,
    provision_concurrency,
    provision_slot_release,
    provision_slot_wait,
    session_locks_drop,
    usable_nodes,
)
from workspaces.pool.target import pool_target_update
from workspaces.runtime.docker import DEFAULT_CPU_WEIGHT

log = logging.getLogger(__name__)

State = Container.State


class NodeUnavailable(ServiceError):
    status_code = 503
    code = "node_unavailable"

    @property
    def retry_after(self):
        return settings.WORKSPACES_RETRY_AFTER


class ProvisionFailed(ServiceError):
    """The engine answered but the container did not start (image missing, port never answered)."""

    status_code = 503
    code = "provision_failed"


def instance():
    return settings.HEARTH_INSTANCE


def _provision_timeout():
    return timedelta(seconds=settings.WORKSPACES_PROVISION_TIMEOUT)


# --- the PROVISIONING row and its provisioner ----------------------------------------------------


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
            if ready >= template.warm_target_now():  # the locked row: the last decision of the pool tick
                return None
        container = Container.objects.create(node=node, template=template, state=State.PROVISIONING)
        container.name = f"hearth-{instance()}-c{container.pk}"
        container.slot_path = str(storage.slot_root() / slot_key(container.pk))
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
        session_locks_drop(f"releasing the provisioner lock of c{pk}", exc)


def provisioners_alive():
    """Lock keys of provisionings whose process is alive.

    Read after the rows: a row in the caller's snapshot committed with its lock already held.
    """
    with connection.cursor() as cursor:
        cursor.execute("SELECT objid FROM pg_locks WHERE locktype = 'advisory' AND granted AND classid = %s "
                       "AND objsubid = 2 AND database = (SELECT oid FROM pg_database WHERE datname = "
                       "current_database())", [_PROVISIONER_LOCK])
        return {int(row[0]) for row in cursor.fetchall()}


def provisioning_abandoned(row, *, now, alive):
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


def slot_key(pk):
    return f"c{pk}"


def container_uid(pk) -> int:
    """The host uid container `pk` runs as: its own, shared with no other live container and no host account.

    A billion up (far above login accounts and the usual /etc/subuid ranges), an offset per instance so that two
    installs on one host do not meet, then the row's pk; a uid comes back only after a million containers.
    """
    offset = zlib.crc32(instance().encode()) % 1000
    return settings.WORKSPACES_UID_BASE + offset * 1_000_000 + int(pk) % 1_000_000


# --- the engine container ------------------------------------------------------------------------


def _spec(container, *, for_warm=True):
    """A warm container starts at WORKSPACES_WARM_CPU_WEIGHT: its code-server start (about a CPU-second) then
    yields to the claimed containers' first page loads; the claim raises it to the plan's. A cold start is for
    the user waiting on it: the normal weight."""
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
        user=container_uid(container.pk),
        cpu_weight=settings.WORKSPACES_WARM_CPU_WEIGHT if for_warm else DEFAULT_CPU_WEIGHT,
    )


def _start(container, *, for_warm=True):
    """Create and start the engine container of a PROVISIONING row; returns when its port answers."""
    storage.slot_create(slot_key(container.pk), uid=container_uid(container.pk))
    runtime = rt.runtime_for(container.node)
    created = runtime.create(_spec(container, for_warm=for_warm))
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
        _start(container, for_warm=for_warm)
    except rt.RuntimeUnavailable as exc:
        _provision_failed(container, exc)
        health.node_call_failed(node, f"provisioning {container}", exc)
        # The engine's URL and error stay in the log and on the node (admin): an answer carries neither.
        raise NodeUnavailable(f"The Docker engine of node '{node.name}' does not answer; try again shortly.",
                              extra={"node": node.name}) from exc
    except Exception as exc:
        _provision_failed(container, exc)
        raise ProvisionFailed(f"Could not start a '{template.slug}' container on node '{node.name}'; "
                              "try again shortly.") from exc
    failpoint("provision.started")
    # What it sent while it started is nobody's: its session's egress counts from here (egress.initial_marks).
    container.egress_baseline_bytes = egress.egress_baseline_read(container)
    if not for_warm:
        # Started: the row is the cold start's to claim now, so the reconciler must not take it for abandoned
        # once the provisioner lock is released (it fails only PROVISIONING rows without ready_at).
        container.ready_at = timezone.now()
        Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(
            ready_at=container.ready_at, egress_baseline_bytes=container.egress_baseline_bytes)
        failpoint("provision.handed")
        return container
    now = timezone.now()
    if not Container.objects.filter(pk=container.pk, state=State.PROVISIONING).update(
        state=State.WARM, ready_at=now, egress_baseline_bytes=container.egress_baseline_bytes
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
    engine_cleanup(container)


def engine_cleanup(container):
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


def container_release(container):
    """Unbind the slot, remove the engine container and mark the row REMOVED. Idempotent.

    The caller has already moved the row out of WARM/CLAIMED (to RELEASING, FAILED or LOST) in a committed
    transaction; on an engine error the row stays as it is and the reconciler retries.
    """
    if container.slot_path:
        storage.slot_unbind(slot=Path(container.slot_path))
    # Its counter goes with it: the last session's bytes since the last tick are metered now.
    try:
        egress.container_egress_final(container, at=timezone.now())
    except Exception:  # metering must not keep a container; only what it sent since the last tick is lost
        log.exception("final egress of %s not metered", container)
    # The address goes to the next container on the bridge, whatever its plan.
    network.container_egress_set(container=container, internet_access="none")
    if not engine_cleanup(container):
        Container.objects.filter(pk=container.pk).update(last_error="release: the engine did not answer")
        return False
    Container.objects.filter(pk=container.pk, state=State.RELEASING).update(
        state=State.REMOVED, removed_at=timezone.now()
    )
    return True


# --- refilling the pool --------------------------------------------------------------------------


def pool_fill(*, template_id=None, now=None):
    """Bring every (template, node) pool to the template's warm target now. Returns the number of containers started.

    The target follows demand (pool.target: the opens of the last minutes and of the same hour on the previous days,
    within the template's warm minimum and maximum); the decision is recorded on the template for admin. Surplus WARM
    containers are released once the pool has been above the target for WORKSPACES_POOL_SHRINK_HOLD. The missing
    containers of a pool start side by side, as many at a time as the node has provisioning slots (one after another
    inside a transaction, where other threads would not see the rows).
    """
    node_ensure_default()
    templates = WorkspaceTemplate.objects.filter(enabled=True, pool_paused=False).order_by("pk")
    if template_id is not None:
        templates = templates.filter(pk=template_id)
    nodes = list(usable_nodes())
    started = 0
    for template in templates:
        target = pool_target_update(template, nodes=nodes, now=now)
        for node in nodes:
            if target.shrink:
                pool_shrink(template=template, node=node, target=target.per_node)
            if _failing_recently(template, node):
                continue
            missing = target.per_node - Container.objects.filter(
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


def pool_shrink(*, template, node, target):
    """Release the WARM containers of `template` on `node` above `target`, oldest first. Returns how many.

    Under the template's row lock (as the refill's reservation), so two ticks never both release the same surplus;
    a container a claim holds (FOR UPDATE) is skipped, never taken from under it.
    """
    with transaction.atomic():
        WorkspaceTemplate.objects.select_for_update().filter(pk=template.pk).first()
        ready = Container.objects.filter(template=template, node=node,
                                         state__in=(State.PROVISIONING, State.WARM)).count()
        extra = surplus(warm=ready, target=target)
        if not extra:
            return 0
        ids = list(Container.objects.select_for_update(skip_locked=True)
                   .filter(template=template, node=node, state=State.WARM).order_by("pk")
                   .values_list("pk", flat=True)[:extra])
        Container.objects.filter(pk__in=ids, state=State.WARM).update(state=State.RELEASING,
                                                                      released_at=timezone.now())
    for container in Container.objects.filter(pk__in=ids).select_related("node", "template"):
        container_release(container)
    log.info("pool %s on %s shrunk by %s to its target %s", template, node, len(ids), target)
    return len(ids)


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


# The refill's nudge waits this long after the first claim before it publishes: a Celery publish costs about 1 ms of
# CPU here, as much as a whole open, and during a burst of opens one publish per process then covers them all
# (instead of one per open, each competing with the opens for the CPU and this process's GIL). Containers take far
# longer than that to start.
REFILL_COALESCE_SECONDS = 0.25


def _refills_publish(template_ids):
    from workspaces import tasks

    for template_id in set(template_ids):  # nudges for the same template coalesce
        try:
            tasks.pool_fill.delay(template_id=template_id)
        except Exception as exc:  # a dead broker delays the refill until the next beat tick
            log.warning("could not enqueue pool_fill: %s", exc)


# Enqueues pool_fill after claims from a background thread, so no open waits on the broker. Best effort by design:
# if the process dies first, the beat's pool-fill tick (every 15 s) refills.
_nudger = BackgroundQueue("hearth-refill-nudger", _refills_publish, delay=REFILL_COALESCE_SECONDS)


def pool_fill_enqueue(template_id):
    """After the current transaction commits, ask a worker to refill the template's pools."""
    transaction.on_commit(lambda: _nudger.put(template_id))
