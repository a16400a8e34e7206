"""What ends a session ends it: a close, a reclaim, a member's removal or a workspace's delete, even racing an open,
leaves no live session, storage bind or gateway route behind.

Real Docker, real PostgreSQL, the tiny image; the route tests run a real HAProxy (tests/workspaces/gateway_fixtures.py).
"""
from pathlib import Path

import pytest

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway_env, start_gateway  # noqa: F401
from workspaces import opening, pool, reconciler, services, sessions, storage
from workspaces.gateway import routes
from workspaces.models import Container, Session

pytestmark = [pytest.mark.django_db, pytest.mark.docker]
State = Container.State


@pytest.fixture(scope="module", params=[True, False], ids=["token-cache", "every-request"])
def gateway(gateway_env, request):  # noqa: F811
    gw = start_gateway(gateway_env, token_cache=request.param)
    yield gw
    gw.process.stop()


# --- a close, a reclaim, a removal or a delete -------------------------------------------------------------------


def test_a_resume_racing_a_close_never_binds_onto_the_released_container(node, tiny_template, workspace, member,
                                                                         monkeypatch):
    """Defect: workspace_open read the live session, then resumed it without re-checking: a close (or idle reclaim,
    or a drain) committed in between, and the resume re-bound the user's directory onto the slot of a container
    being removed, re-set its gateway route and answered 200 with a URL for an ended session (or, once the slot was
    gone, a raw StorageError: a 500). Bound onto a slot that slot_remove is about to delete, the user's files are in
    the path of its rmtree. Here the close runs completely between the open's check and its resume."""
    pool.pool_fill()
    home = Path(workspace.storage_path)
    home.mkdir(parents=True, exist_ok=True)
    (home / "keep.txt").write_text("mine")
    first = services.workspace_open(workspace=workspace, user=member.user).session
    old = Container.objects.get(pk=first.container_id)

    real_resume = opening._resume

    def close_then_resume(session):
        # The open has read the session as live; the close commits and releases before the resume goes on.
        services.session_close(session=first, actor=member.user)
        return real_resume(session)

    monkeypatch.setattr(opening, "_resume", close_then_resume)
    opened = services.workspace_open(workspace=workspace, user=member.user)
    monkeypatch.undo()

    old.refresh_from_db()
    assert old.state == State.REMOVED
    assert not storage.is_mount_point(Path(old.slot_path)) and not Path(old.slot_path).exists()
    session = Session.objects.get(pk=opened.session.pk)
    assert session.ended_at is None and session.pk != first.pk and not opened.resumed
    assert Container.objects.get(pk=session.container_id).state == State.CLAIMED
    assert storage.is_mount_point(Path(session.container.slot_path))
    assert (home / "keep.txt").read_text() == "mine"


def test_a_member_removed_from_the_tenant_loses_their_running_session(node, tiny_template, workspace, member,
                                                                      tenant_e):
    """Defect: member_remove deleted the membership but nothing ended the member's live sessions. The API then says
    404, but the gateway checks only the session token (valid for GATEWAY_TOKEN_TTL, 8 h) and the route, which
    stays while the session lives: the removed member kept a running workspace of the tenant, metered to it, and
    their own activity kept it from ever going idle. The periodic reclaim (every 30 s) must end it."""
    from tenants import services as tenant_services
    from tests.factories import MembershipFactory

    admin = MembershipFactory(tenant=tenant_e, role="admin")
    session = services.workspace_open(workspace=workspace, user=member.user).session
    tenant_services.member_remove(membership=member, actor=admin.user)
    services.sessions_reclaim()
    session.refresh_from_db()
    assert session.ended_at is not None
    assert Container.objects.get(pk=session.container_id).state == State.REMOVED


def test_an_open_racing_a_delete_leaves_no_session_on_the_deleted_workspace(node, tiny_template, workspace, member,
                                                                          monkeypatch):
    """Defect: workspace_delete ended the live sessions first and marked the workspace deleted afterwards; an open
    landing in between claimed a container, bound the files (deleted under it a moment later) and kept a live,
    metered session and a gateway route on a deleted workspace until idle reclaim."""
    pool.pool_fill()
    services.workspace_open(workspace=workspace, user=member.user)
    real_end, raced = sessions.session_end, []

    def end_then_open(*, session, reason, **kwargs):
        ended = real_end(session=session, reason=reason, **kwargs)
        if reason == Session.EndReason.DELETED and not raced:
            raced.append(True)
            try:  # the owner's open (another request) lands right after the sessions were ended
                services.workspace_open(workspace=workspace, user=member.user)
            except Exception as exc:  # refused: the workspace is already deleted
                raced.append(exc)
        return ended

    monkeypatch.setattr(sessions, "session_end", end_then_open)
    services.workspace_delete(workspace=workspace, actor=member.user, confirm=workspace.name)
    monkeypatch.undo()
    assert raced
    reconciler.reconcile()  # a session that slipped past the delete ends at the next tick at the latest
    live = Session.objects.filter(workspace=workspace, ended_at__isnull=True)
    assert not live.exists(), "a live session on a deleted workspace"
    assert not Path(workspace.storage_path).exists()


def test_a_session_claimed_past_a_delete_is_ended_by_the_next_reconcile(node, tiny_template, workspace, member):
    """The rest of the race above: an open that passed its checks just before the delete committed claims afterwards.
    Here the delete's commit lands between the open's checks and its claim."""
    from django.utils import timezone

    from workspaces.models import Workspace

    session = services.workspace_open(workspace=workspace, user=member.user).session
    Workspace.objects.filter(pk=workspace.pk).update(deleted_at=timezone.now())
    reconciler.reconcile()
    session.refresh_from_db()
    assert session.ended_at is not None and session.end_reason == Session.EndReason.DELETED


# --- a session closed while it is being (re)opened: its route ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.docker
@pytest.mark.parametrize("close_when", ["before_route", "after_route"])
def test_a_fresh_session_closed_while_it_is_opened_keeps_no_route(gateway, workspace, member, node, tiny_template,  # noqa: F811
                                                                  monkeypatch, close_when):
    """A new session (warm claim) closed by another request while its open is still binding or routing: whichever
    comes first, the open answers 409 session_ended and no route to the ended session is left behind."""
    from tenants.exceptions import Conflict
    from workspaces import opening, pool, routing, services
    from workspaces.models import Session

    pool.pool_fill()
    real_bind, real_route = opening._bind, routing.route_set_locked
    closed = []

    def close(session):
        services.session_close(session=Session.objects.get(pk=session.pk), actor=member.user)
        closed.append(session.pk)

    def bind_then_close(session, *, resumed=False):
        real_bind(session, resumed=resumed)
        if close_when == "before_route":
            close(session)

    def route_then_close(*, host_key, session_id, address):
        real_route(host_key=host_key, session_id=session_id, address=address)
        if close_when == "after_route" and not closed:
            close(Session.objects.get(pk=session_id))

    monkeypatch.setattr(opening, "_bind", bind_then_close)
    monkeypatch.setattr(routing, "route_set_locked", route_then_close)
    with pytest.raises(Conflict) as failed:
        services.workspace_open(workspace=workspace, user=member.user)
    assert failed.value.code == "session_ended"
    assert Session.objects.get(pk=closed[0]).ended_at is not None
    route = routes.route_get(workspace.host_key)
    assert route is None or route.session_id != str(closed[0]), "a route to an ended session was left"


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
@pytest.mark.docker
def test_a_session_closed_while_it_is_reopened_leaves_no_route(gateway, workspace, member, node, tiny_template,  # noqa: F811
                                                                monkeypatch):
    """Open of a workspace whose session is live (the "resume" path) racing with that session's close (another
    tab, the API, or the idle reclaimer): before the fix the open read the session as live, the close committed,
    deleted the route and removed the container, then the open's route_set put the route back, and the ended
    session's tokens reached whatever container Docker gave its address to next (here a new warm container of
    the pool, which another tenant claims later). The close is started, in another thread with its own database
    connection, at the one moment it can land: after the open's read, while it binds. It must wait for the open
    (the session's row lock) and then delete the route the open set."""
    import threading

    from django.db import connection

    from workspaces import opening, pool, services
    from workspaces.models import Session

    pool.pool_fill()
    first = services.workspace_open(workspace=workspace, user=member.user)
    assert gateway.get(workspace.host_key, "/", token=first.token).status_code == 200

    real_bind = opening._bind
    closer, events = None, []

    def close_in_another_request():
        try:
            services.session_close(session=Session.objects.get(pk=first.session.pk), actor=member.user)
            events.append("closed")
        finally:
            connection.close()

    def bind_while_a_close_starts(session, *, resumed=False):
        nonlocal closer
        if resumed and closer is None:
            closer = threading.Thread(target=close_in_another_request)
            closer.start()
            closer.join(timeout=0.5)
            assert closer.is_alive(), "the close did not wait for the open holding the session"
        real_bind(session, resumed=resumed)

    monkeypatch.setattr(opening, "_bind", bind_while_a_close_starts)
    again = services.workspace_open(workspace=workspace, user=member.user)
    events.append("opened")
    monkeypatch.setattr(opening, "_bind", real_bind)
    closer.join(timeout=30)
    assert events == ["opened", "closed"]
    assert again.session.pk == first.session.pk
    assert Session.objects.get(pk=first.session.pk).ended_at is not None
    pool.pool_fill()  # the refill after the close: Docker hands the freed address to a new container

    for token in (first.token, again.token):
        r = gateway.get(workspace.host_key, "/", token=token)
        assert r.status_code == 410, f"the closed session's token reached a container: {r.status_code} {r.text[:80]}"
    route = routes.route_get(workspace.host_key)
    assert route is None or route.session_id != str(first.session.pk), "a route to an ended session came back"


@pytest.mark.slow
@pytest.mark.django_db
@pytest.mark.docker
def test_a_failed_route_delete_does_not_hand_the_route_to_the_next_container(gateway, workspace, member, node,  # noqa: F811
                                                                              tiny_template, monkeypatch):  # noqa: F811
    """session_end swallows a failed route_delete (the admin socket timed out, HAProxy was busy) and removes the
    container anyway; the refill it nudges gets the freed address from Docker, and the ended session's route,
    still in the map until the reconciler's next pass, leads its tokens into that new container. The failure is
    staged (route_delete raising as it does on a socket timeout); everything else is real."""
    from workspaces import pool, reconciler, services
    from workspaces.gateway.runtime_api import GatewayUnavailable
    from workspaces.models import Container

    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    own = opened.session.container

    def admin_socket_timed_out(**kwargs):
        raise GatewayUnavailable(f"{gateway.cfg.admin_socket}: timed out")

    monkeypatch.setattr(routes, "route_delete", admin_socket_timed_out)
    services.session_close(session=opened.session, actor=member.user)
    monkeypatch.undo()
    pool.pool_fill()  # the refill the close nudged

    route = routes.route_get(workspace.host_key)
    if route is not None:
        others = Container.objects.filter(address=route.address).exclude(pk=own.pk).exclude(
            state__in=(Container.State.REMOVED, Container.State.FAILED, Container.State.LOST))
        assert not others.exists(), "the ended session's route leads to another container"
    reconciler.reconcile()
    assert routes.route_get(workspace.host_key) is None
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code == 410
    assert Container.objects.get(pk=own.pk).state == Container.State.REMOVED
