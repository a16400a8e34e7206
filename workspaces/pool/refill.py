"""The warm pool's refill: each (template, node) pool brought to the template's warm target (`pool_fill`, the beat's
tick and the nudge after claims), its surplus released once demand falls (`pool_shrink`), and the nudge itself
(`pool_fill_enqueue`: a background thread publishes the refill task after the claim's commit).

Starting and removing the containers themselves is `provisioning`'s; the target is `target`'s (the demand rule).
"""
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

from django.conf import settings
from django.db import connections, transaction
from django.utils import timezone

from core.background import BackgroundQueue
from tenants.exceptions import ServiceError
from workspaces.models import Container, WorkspaceTemplate
from workspaces.pool.demand import surplus
from workspaces.pool.placement import node_ensure_default, provision_concurrency, usable_nodes
from workspaces.pool.provisioning import _PROVISIONER_DIED, NodeUnavailable, container_provision, container_release
from workspaces.pool.target import pool_target_update

log = logging.getLogger(__name__)

State = Container.State


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
