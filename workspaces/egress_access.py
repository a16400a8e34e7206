"""Internet access of claimed containers: the grant that an open hands to a background thread (off its request path),
and the reconciler's sync that closes access no live session holds and grants what a live session lacks.

The one rule that keeps an address from keeping access it must not have: a grant is made only while its session's
row is locked (`FOR NO KEY UPDATE`), live (`ended_at IS NULL`) and still on that container (CLAIMED). Every close of
an address follows the end of its session, and every end locks that row first (`sessions.session_end`, whatever
asks for it: release, reconciler, quota, delete, offboarding): so a grant either commits before the end, and the
release's close comes after it, or finds the session ended and grants nothing. (The reconciler's close of an
address without a live session needs no lock: a close is always safe.)
"""
import contextvars
import logging
from typing import NamedTuple

from django.conf import settings
from django.db import close_old_connections, connection, transaction

from core import telemetry
from core.background import BackgroundQueue
from workspaces import metrics, network
from workspaces.failpoints import failpoint
from workspaces.models import Container, Session

log = logging.getLogger(__name__)

_LOCK_SQL = (f"SELECT 1 FROM {Session._meta.db_table} s JOIN {Container._meta.db_table} c ON c.id = s.container_id "
             "WHERE s.id = %s AND s.ended_at IS NULL AND s.container_id = %s AND c.state = %s "
             "FOR NO KEY UPDATE OF s")


class _Grant(NamedTuple):
    session_id: object
    container_id: int
    ip: str
    internet_access: str
    context: contextvars.Context | None = None  # the open's: its trace (the span's parent) and its ids for the logs


def session_egress_grant_later(*, session, internet_access):
    """The plan's access for a just-bound session's container, a few ms after the open answers: queued for this
    process's granter thread (`_granter`). Inside a transaction (a resume, which holds the session's row already)
    it is made at once, under that lock: a background grant would only wait for the commit."""
    ip = network.local_ip(session.container)
    if ip is None or internet_access not in ("open", "proxy"):
        return
    if transaction.get_connection().in_atomic_block:
        _grant_or_count(_Grant(session.pk, session.container_id, ip, internet_access))
        return
    _granter.put(_Grant(session.pk, session.container_id, ip, internet_access, telemetry.context_handoff()))


def egress_grants_wait_idle(timeout=5.0):
    """True once this process's granter has nothing queued or in hand (tests; False after `timeout` seconds)."""
    return _granter.wait_idle(timeout)


def _grant(grant, *, checked=False):
    """Grant under the session's row lock; False if the session ended or left the container (nothing granted).
    `checked`: the idempotent path (the reconciler's), else the open's single iptables-restore."""
    with telemetry.span("workspace.egress_grant", {"hearth.internet_access": grant.internet_access}):
        with transaction.atomic():
            with connection.cursor() as cursor:
                cursor.execute(_LOCK_SQL, [grant.session_id, grant.container_id, Container.State.CLAIMED])
                if cursor.fetchone() is None:
                    return False
            failpoint("egress.locked")
            change = network.egress_ensure if checked else network.egress_grant
            change(instance=settings.HEARTH_INSTANCE, ip=grant.ip, internet_access=grant.internet_access,
                   proxy_port=settings.EGRESS_PROXY_PORT or None)
    return True


def _grant_or_count(grant):
    try:
        _grant(grant)
    except Exception:  # iptables or the database: the reconciler's next pass grants it (`egress_access_sync`)
        metrics.EGRESS_GRANT_FAILURES.inc()
        log.exception("granting Internet access to session %s failed", grant.session_id)


def _grants_make(batch):
    close_old_connections()  # a connection broken or past CONN_MAX_AGE, as between two requests
    for grant in batch:
        grant.context.run(_grant_or_count, grant)
    close_old_connections()


# The granter waits GRANT_DELAY_SECONDS after an open hands it a grant: woken at once, its thread would run while the
# open still does (this process's GIL: it takes it at the open's next database round trip) and add the grant's 1-2 ms
# of CPU to the open's time; a burst's grants also come in one batch. By then the open has answered, and the browser
# has not yet loaded the IDE, let alone asked the Internet for anything.
GRANT_DELAY_SECONDS = 0.02
_granter = BackgroundQueue("hearth-egress-granter", _grants_make, delay=GRANT_DELAY_SECONDS)


def egress_access_sync():
    """The reconciler's pass: access only for the live sessions of open and proxy plans (a lost container's address
    is reused), and theirs granted if it is missing (a grant that failed, or was lost with its process). Returns
    (closed, granted)."""
    if not settings.HEARTH_NETWORK_POLICY:
        return 0, 0
    live = {"open": set(), "proxy": set()}
    by_ip = {}
    for session in Session.objects.filter(
        ended_at__isnull=True, container__state=Container.State.CLAIMED,
        tenant__plan__internet_access__in=tuple(live),
    ).select_related("container__node", "tenant__plan"):
        ip = network.local_ip(session.container)
        if ip is not None:
            access = session.tenant.plan.internet_access
            live[access].add(ip)
            by_ip[ip] = _Grant(session.pk, session.container_id, ip, access)
    try:
        closed, missing = network.egress_sync(instance=settings.HEARTH_INSTANCE, allowed=live["open"],
                                              proxied=live["proxy"], proxy_port=settings.EGRESS_PROXY_PORT or None)
    except network.NetworkPolicyError as exc:
        log.warning("syncing Internet access failed: %s", exc)
        return 0, 0
    granted = 0
    for ip in missing:
        try:
            granted += _grant(by_ip[ip], checked=True)
        except network.NetworkPolicyError as exc:
            log.warning("granting Internet access to session %s failed: %s", by_ip[ip].session_id, exc)
    return closed, granted
