"""Where containers go and how many start at once: nodes and their capacity, placement, the nodes' provisioning
slots and the line of cold opens waiting for one."""
import logging
import os
import threading
import time
from dataclasses import dataclass

from django.conf import settings
from django.db import DatabaseError, OperationalError, connection, transaction
from django.db.models import Count, Sum

from tenants.exceptions import ServiceError
from workspaces.models import Container, Node
from workspaces.pool.health import node_healthy

log = logging.getLogger(__name__)


class NoCapacity(ServiceError):
    """No usable, healthy node has room: temporary (containers are released, engines come back), so a 503."""

    status_code = 503
    code = "no_capacity"

    @property
    def retry_after(self):
        return settings.WORKSPACES_RETRY_AFTER


def no_capacity(template):
    """The NoCapacity for `template`, saying whether any node can take containers at all (never which engine)."""
    if not usable_nodes().exists():
        return NoCapacity("No workspace node is available right now; try again shortly.")
    return NoCapacity(f"No node has room for another '{template.slug}' workspace; try again shortly.")


class PoolBusy(ServiceError):
    """Every provisioning slot stayed busy and no container warmed up while a cold open waited."""

    status_code = 503
    code = "pool_busy"


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
    """Nodes that take new containers and claims: enabled, not draining and healthy (pool.health)."""
    return Node.objects.filter(node_healthy(), enabled=True, draining=False).order_by("pk")


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


def session_locks_drop(what, exc):
    """An unlock failed: the connection is gone (its locks with it) or sits in an aborted transaction (its locks
    held for as long as a persistent connection lives). Close it either way, so the server drops them now."""
    log.warning("%s: %s; closing the database connection to drop its locks", what, exc)
    connection.close()


def provision_slot_release(node, slot):
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s * 1024 + %s)", [_SLOT_LOCK_CLASS, node.pk, slot])
    except DatabaseError as exc:
        session_locks_drop(f"releasing provisioning slot {slot} of {node}", exc)
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
            session_locks_drop(f"leaving the cold-open line of {self.template}", exc)
