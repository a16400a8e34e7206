"""Starting and removing containers: the PROVISIONING row and its provisioner lock, the engine container, and a
container's release. The warm pool's refill, which calls these, is `refill`.

Every step that talks to an engine first commits the row that describes it (PROVISIONING before create,
RELEASING before remove), so a worker killed at any point leaves a row the reconciler can finish.
"""
import http.client
import logging
import zlib
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from tenants.exceptions import ServiceError
from workspaces import egress, network, storage
from workspaces import runtime as rt
from workspaces.failpoints import failpoint
from workspaces.models import Container, Node, WorkspaceTemplate
from workspaces.pool import health
from workspaces.pool.placement import (
    node_loads,
    pool_changed_notify,
    provision_slot_release,
    provision_slot_wait,
    session_locks_drop,
)
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
