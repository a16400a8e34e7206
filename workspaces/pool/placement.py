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

from tenants.exceptions import Conflict, ServiceError
from workspaces.models import Container, Node, Session, WorkspaceTemplate
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


def placement_candidates(template, *, tenant=None):
    """Usable nodes with room for one more container of `template`, least loaded first; for `tenant`, only those
    where it stays within its fair share (FairShareLimit when that leaves none of the nodes with room)."""
    node_ensure_default()
    loads = [nl for nl in node_loads(list(usable_nodes())) if nl.room_for(template)]
    if tenant is not None and loads:
        within = fair_share_nodes(tenant_id=tenant.pk, template=template, node_ids=[nl.node.pk for nl in loads])
        if not within:
            raise FairShareLimit(
                f"{tenant.name} already holds its share ({settings.WORKSPACES_TENANT_NODE_SHARE:.0%}) of every "
                f"node with room, and other organisations need the rest: close a workspace, or try again later.")
        loads = [nl for nl in loads if nl.node.pk in within]
    return [nl.node for nl in sorted(loads, key=lambda nl: (nl.load, nl.node.pk))]


# --- fair share: no tenant holds more than WORKSPACES_TENANT_NODE_SHARE of a node ------------------------------------
#
# The one rule, as an SQL list of the nodes where a tenant is at its share, so that the warm claim (pool/claim.py)
# checks it inside its own statement, at no extra round trip, and placement (above) with the same text. A tenant's
# load on a node is measured as the node's own (the largest of containers, CPU and memory over its capacity) over the
# containers of the tenant's live sessions there, counting the one being placed. A node where the tenant has nothing
# is never in the list: a tenant may always have one container on a node. Not correlated with the claim's rows, so
# PostgreSQL computes it once per statement (a hashed subplan), not once per WARM row it looks at.

class FairShareLimit(Conflict):
    code = "fair_share"


FAIR_SHARE_FULL_NODES_SQL = f"""
    SELECT fc.node_id FROM {Session._meta.db_table} fs
    JOIN {Container._meta.db_table} fc ON fc.id = fs.container_id
    JOIN {WorkspaceTemplate._meta.db_table} ft ON ft.id = fc.template_id
    JOIN {Node._meta.db_table} fn ON fn.id = fc.node_id
    WHERE fs.tenant_id = %s AND fs.ended_at IS NULL
    GROUP BY fc.node_id, fn.max_containers, fn.cpus, fn.memory_mb
    HAVING greatest(
        (count(*) + 1)::float / greatest(fn.max_containers, 1),
        (sum(ft.cpus) + %s)::float / greatest(fn.cpus, 0.01),
        (sum(ft.memory_mb) + %s)::float / greatest(fn.memory_mb, 1)
    ) > %s"""


def fair_share_params(*, tenant_id, template):
    """FAIR_SHARE_FULL_NODES_SQL's parameters, in order."""
    return [tenant_id, float(template.cpus), template.memory_mb, float(settings.WORKSPACES_TENANT_NODE_SHARE)]


def fair_share_nodes(*, tenant_id, template, node_ids):
    """The ids among `node_ids` where `tenant_id` may have one more container of `template`."""
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT n.id FROM {Node._meta.db_table} n WHERE n.id = ANY(%s) "
                       f"AND n.id NOT IN ({FAIR_SHARE_FULL_NODES_SQL})",
                       [list(node_ids), *fair_share_params(tenant_id=tenant_id, template=template)])
        return {row[0] for row in cursor.fetchall()}


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
