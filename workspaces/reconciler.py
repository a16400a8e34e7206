"""The reconciler: one pass that makes the gateway's routes, the database, every engine and this host's workspace
firewall rules agree, run by the Celery tick, the admin's "reconcile" action and the tests through `reconcile()`.

The order matters for crash safety: routes are synced before any release finishes (a RELEASING container whose
route_delete failed is removed only once no route leads to its address, which the next container may get), and
again at the end for the sessions this pass ended.
"""
import logging
from datetime import timedelta

from django.utils import timezone

from workspaces import egress_access, metrics, routing, sessions, storage, userns
from workspaces import runtime as rt
from workspaces.models import Container, Node, Session
from workspaces.pool import health, provisioning

log = logging.getLogger(__name__)

State = Container.State
EndReason = Session.EndReason


def _report():
    return {"orphans_removed": 0, "lost": 0, "failed": 0, "released": 0, "slots_removed": 0,
            "sessions_ended": 0, "nodes_unreachable": []}


def reconcile(*, now=None):
    """Make the gateway, the database and every engine agree. Returns a report of what was fixed."""
    now = now or timezone.now()
    report = _report()
    routing.gateway_routes_sync()
    for node in Node.objects.filter(enabled=True).order_by("pk"):
        _node_reconcile(node, now=now, report=report)
    # Dead rows whose engine container the reconciler could not reach before.
    for row in Container.objects.filter(state__in=(State.FAILED, State.LOST), removed_at__isnull=True,
                                        node__enabled=True).select_related("node"):
        if provisioning.engine_cleanup(row):
            Container.objects.filter(pk=row.pk).update(removed_at=now)
    # Live sessions on a container that is no longer claimed (lost, removed) end too.
    # (A `starting` session has no container yet: its worker, or the reclaim tick's time-out, settles it.)
    for session in Session.objects.filter(ended_at__isnull=True, container__isnull=False).exclude(
            container__state=State.CLAIMED):
        sessions.session_end(session=session, reason=EndReason.LOST)
        report["sessions_ended"] += 1
    report["slots_removed"] = _stale_slots_remove()
    report["egress_closed"], report["egress_granted"] = egress_access.egress_access_sync()
    # An open that passed its checks just before a delete may have claimed after the delete ended the sessions.
    for session in Session.objects.filter(ended_at__isnull=True, workspace__deleted_at__isnull=False):
        sessions.session_end(session=session, reason=EndReason.DELETED)
        report["sessions_ended"] += 1
    routing.gateway_routes_sync()
    metrics.reconcile_record(report, full=True)
    return report


def node_reconcile(node, *, now=None):
    """The pass for one node only, with the routes synced around it: what the engine-event follower runs each time
    it (re)connects, for whatever happened on the engine while no stream was open (a restart loses its events)."""
    now = now or timezone.now()
    report = _report()
    routing.gateway_routes_sync()
    _node_reconcile(node, now=now, report=report)
    routing.gateway_routes_sync()
    metrics.reconcile_record(report, full=False)
    return report


def container_lost(row, *, reason, report=None):
    """A WARM or CLAIMED container that no longer runs on its engine: LOST, its sessions ended (`lost`: metered to
    now, route deleted) and whatever is left of it removed. A no-op (False) if the row has moved on meanwhile."""
    if not Container.objects.filter(pk=row.pk, state=row.state, state__in=(State.WARM, State.CLAIMED)).update(
            state=State.LOST, last_error=reason):
        return False
    report = report if report is not None else _report()
    report["lost"] += 1
    for session in Session.objects.filter(container=row, ended_at__isnull=True):
        sessions.session_end(session=session, reason=EndReason.LOST)
        report["sessions_ended"] += 1
    provisioning.engine_cleanup(row)
    return True


def _node_reconcile(node, *, now, report):
    """Compare one engine's containers (found by labels) with the node's rows and fix what differs."""
    try:
        rt.runtime_for(node).network_policy_ensure()  # rules lost to a firewall reload come back within a tick
        engine = rt.runtime_for(node).list(instance=provisioning.instance())
    except rt.RuntimeUnavailable as exc:
        # Nothing on an engine that cannot be asked is marked LOST; the node is unhealthy after enough of these.
        health.node_call_failed(node, "reconcile", exc, now=now)
        report["nodes_unreachable"].append(node.name)
        return
    except rt.RuntimeError_ as exc:  # it answered (so it is alive) but refused: say why in admin, fix nothing
        Node.objects.filter(pk=node.pk).update(last_error=f"{now:%Y-%m-%d %H:%M:%S} reconcile: {exc}"[:2000])
        report["nodes_unreachable"].append(node.name)
        return
    health.node_answered(node, now=now)
    by_pk = {}
    for found in engine:
        if found.labels.get("hearth.node", node.name) == node.name:
            by_pk.setdefault(found.labels.get("hearth.container", ""), []).append(found)
    rows = list(Container.objects.filter(node=node, state__in=Container.ACTIVE_STATES).select_related(
        "node", "template"))
    alive = provisioning.provisioners_alive() if any(row.state == State.PROVISIONING for row in rows) else None
    for row in rows:
        found = by_pk.pop(str(row.pk), [])
        if row.state == State.PROVISIONING:
            abandoned = provisioning.provisioning_abandoned(row, now=now, alive=alive)
            if abandoned and Container.objects.filter(abandoned[0], pk=row.pk, state=State.PROVISIONING).update(
                state=State.FAILED, last_error=abandoned[1]
            ):
                provisioning.engine_cleanup(row)
                report["failed"] += 1
            continue
        if row.state == State.RELEASING:
            report["released"] += int(provisioning.container_release(row))
            continue
        running = any(f.status == "running" for f in found)
        if not running:
            container_lost(row, reason="missing or stopped on the engine", report=report)
            continue
        if row.state == State.CLAIMED and not Session.objects.filter(container=row, ended_at__isnull=True).exists():
            # Its session ended but the release did not happen (worker killed): finish it.
            if Container.objects.filter(pk=row.pk, state=State.CLAIMED, claimed_at__lt=now - timedelta(
                    seconds=30)).update(state=State.RELEASING, released_at=now):
                report["released"] += int(provisioning.container_release(row))
    runtime = rt.runtime_for(node)
    for leftovers in by_pk.values():
        for found in leftovers:
            try:
                runtime.remove(found.engine_id)
                report["orphans_removed"] += 1
            except (rt.RuntimeUnavailable, rt.RuntimeError_) as exc:
                log.warning("could not remove orphan %s: %s", found.name, exc)


def _stale_slots_remove():
    root = storage.slot_root()
    # Directories first, rows second: a slot seen here belongs to a row already committed (the row commits
    # before its slot is made), so a provisioning that starts meanwhile never loses its fresh slot.
    entries = [entry for entry in root.iterdir() if entry.is_dir()] if root.exists() else []
    live = {provisioning.slot_key(pk) for pk in Container.objects.filter(
        state__in=Container.ACTIVE_STATES).values_list("pk", flat=True)}
    removed = 0
    for entry in entries:
        if entry.name.startswith("c") and entry.name not in live:
            storage.slot_remove(entry)
            removed += 1
    for key in userns.userns_pins():  # a pin whose slot went without it (a crash between the two)
        if key.startswith("c") and key not in live:
            userns.userns_unpin(key=key)
    return removed
