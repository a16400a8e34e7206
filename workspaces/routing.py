"""Keeping the gateway's routes in step with the live sessions: the open's route, routes set under the session's row
lock, route deletion on release, and the reconciler's sync of the whole map."""
import logging

from django.db import transaction

from config import db
from core import telemetry
from tenants.exceptions import Conflict
from workspaces import selectors
from workspaces.gateway import routes as gateway_routes
from workspaces.gateway import tracing as gateway_tracing
from workspaces.gateway.runtime_api import GatewayUnavailable
from workspaces.models import Session

log = logging.getLogger(__name__)


_SESSION_LIVE_SQL = f"SELECT 1 FROM {Session._meta.db_table} WHERE id = %s AND ended_at IS NULL"


def route_set_for_open(session):
    """Route a session this open has just claimed, and make sure an end racing with it leaves no route.

    session_end commits ended_at, then deletes the route; this sets the route, then reads ended_at. Either the
    delete comes after the set (and removes it) or the read comes after the commit (and the route is taken back
    here): an ended session keeps no route past its open's answer. The route can lead to the ending session's own
    container for the microseconds between the set and the read; its address goes to another container only
    once that one is removed and a new one started, hundreds of milliseconds later. No row lock: on the warm
    open's path it cost a transaction with a WAL flush (+25 % CPU per open at 20 concurrent opens).
    """
    host_key, session_id = session.workspace.host_key, str(session.pk)
    # A session still `starting` (no container yet) gets the gateway's "starting" page.
    address = session.container.address if session.container_id is not None else None
    route_set_locked(host_key=host_key, session_id=session.pk, address=address)
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


def route_set_while_live(*, host_key, session_id, address):
    """Route a session only while it is live; False (and no route) once it has ended.

    session_end commits ended_at, then deletes the route. A route_set by an open (or the reconciler) that read the
    session as live before that commit would put the route back after the delete, and the ended session's tokens
    would reach whichever container is given its address next. Under the session's row lock the route_set comes
    either before the end's commit (whose delete then follows) or after it, and sees the session ended.
    """
    with transaction.atomic():
        if not _session_lock_if_live(session_id):
            return False
        route_set_locked(host_key=host_key, session_id=session_id, address=address)
    return True


def route_set_locked(*, host_key, session_id, address):
    """route_set for a session whose row lock this transaction holds (so it is live)."""
    with telemetry.step("workspace.route", {"hearth.route.starting": address is None}):
        try:
            gateway_routes.route_set(host_key=host_key, session_id=str(session_id), address=address)
        except GatewayUnavailable as exc:
            # HAProxy is down or restarting: it restores every live route from live_routes() when it starts.
            log.warning("route_set(%s): the gateway does not answer (%s); it restores routes at start", host_key, exc)
        if address is not None:
            gateway_tracing.first_request_expect(session_id=session_id)


def route_delete_for(workspace) -> bool:
    """False when a running gateway may still hold the route (its socket timed out, or the command failed)."""
    try:
        gateway_routes.route_delete(host_key=workspace.host_key)
    except Exception as exc:  # the gateway being down must not keep a container claimed
        log.warning("route_delete(%s) failed: %s", workspace.host_key, exc)
        # Not running (no socket, refused): when it starts it restores the live sessions' routes only.
        return isinstance(exc, GatewayUnavailable) and isinstance(exc.__cause__,
                                                                   (FileNotFoundError, ConnectionRefusedError))
    return True


def gateway_routes_sync():
    """Make the gateway's route map match the live sessions: add what a failed route_set missed, delete
    what a failed route_delete left. Returns (added, deleted); (0, 0) when the gateway does not answer.

    The map is read before the database, so a session opened in between is in the database snapshot
    (and kept), and a route missing from the snapshot belongs to a session that had already ended.
    """
    with telemetry.span("gateway.routes_sync"):
        return _routes_sync()


def _routes_sync():
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
            added += route_set_while_live(host_key=host_key, session_id=session_id, address=address)
    for host_key in present.keys() - wanted.keys():
        gateway_routes.route_delete(host_key=host_key)
        deleted += 1
    return added, deleted
