"""Review of isolation and consistency: what a user with a shell in their workspace can make Hearth's host-side code
do, and races between an open and a release. Real Docker, real PostgreSQL, the tiny image.

Each test here reproduced a defect found in review (see the docstrings); they pass once it is fixed.
"""
import os
import time
from pathlib import Path

import pytest

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import docker_exec
from workspaces import pool, services, storage
from workspaces.models import Container, Session
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]
State = Container.State

# Deeper than Python 3.11's recursion limit (1000): shutil.rmtree and tarfile.add recurse once per level.
DEEP = 1200


def _deep_tree(top, depth=DEEP, name="d", leaf=None):
    """Nested directories `depth` levels under `top`, made relative to a descriptor (as a user in a container can,
    with `mkdir d && cd d` in a loop), optionally with a file of `leaf` bytes at the bottom. Returns the leaf's size."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir(name, dir_fd=fd)
            child = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        if leaf:
            out = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
            os.ftruncate(out, leaf)
            os.close(out)
    finally:
        os.close(fd)
    return leaf or 0


def _exec(node, container, script, timeout=120):
    return docker_exec(runtime_for(node), container.engine_id, "sh", "-c", script, timeout=timeout)


# --- storage: host-side deletion of what a user wrote ------------------------------------------------------------


def test_deleting_a_workspace_removes_a_deep_tree_the_user_made(node, tiny_template, workspace, member):
    """Defect: workspace_delete used shutil.rmtree, which in Python 3.11 recurses once per directory level. A user
    who runs `for i in $(seq 1200); do mkdir d && cd d; done` in their home made the delete fail with
    RecursionError (a 500) after the workspace was already marked deleted, and their files stayed on the host
    for good (still counted in the tenant's storage)."""
    home = Path(workspace.storage_path)
    home.mkdir(parents=True, exist_ok=True)
    (home / "notes.txt").write_text("x")
    _deep_tree(home)
    services.workspace_delete(workspace=workspace, actor=member.user, confirm=workspace.name)
    assert not home.exists()


def test_a_deep_tree_in_the_hidden_slot_does_not_wedge_release_or_the_reconciler(node, tiny_template, workspace,
                                                                                 member):
    """Defect: every process started before the claim (docker-init, httpd; code-server in warm mode) has its working
    directory in the bare slot under the bind, and /proc/<pid>/cwd is open to the same uid: from their shell the
    user writes into the hidden slot (outside their own directory, unmetered). A deep tree there made slot_remove's
    shutil.rmtree raise RecursionError: the release left the container RELEASING, and every later reconcile()
    raised at that row, so the reconciler stopped for the whole install (no LOST detection, no stale slots, no route
    sync, the row counting against capacity for ever)."""
    opened = services.workspace_open(workspace=workspace, user=member.user)
    container = Container.objects.select_related("node").get(pk=opened.session.container_id)
    code, out = _exec(node, container, f"cd /proc/1/cwd && echo hidden > under-the-bind && i=0; "
                                       f"while [ $i -lt {DEEP} ]; do mkdir d && cd d || exit 1; i=$((i+1)); done")
    assert code == 0, out
    # It landed in the bare slot (hidden by the bind), not in the user's directory.
    assert not (Path(workspace.storage_path) / "under-the-bind").exists()
    storage.slot_unbind(slot=Path(container.slot_path))
    assert (Path(container.slot_path) / "under-the-bind").read_text() == "hidden\n"
    storage.slot_bind(slot=Path(container.slot_path), source=workspace.storage_path)

    services.session_close(session=opened.session, actor=member.user)
    container.refresh_from_db()
    assert container.state == State.REMOVED, container.last_error
    assert not Path(container.slot_path).exists()
    services.reconcile()  # raised RecursionError on every tick before the fix


# --- races between an open and a release --------------------------------------------------------------------------


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

    real_resume = services._resume

    def close_then_resume(session):
        # The open has read the session as live; the close commits and releases before the resume goes on.
        services.session_close(session=first, actor=member.user)
        return real_resume(session)

    monkeypatch.setattr(services, "_resume", close_then_resume)
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


# --- hardening: limits shared by every workspace ------------------------------------------------------------------


def test_one_workspace_cannot_use_up_inotify_for_all_others(node, tiny_template, tenant_e, make_workspace):
    """Defect (not fixed): every workspace container runs as the same host uid 1000 without a user namespace, so the
    kernel's per-user inotify limits (fs.inotify.max_user_instances, 128 here, and max_user_watches) are one pool
    shared by all tenants' workspaces (and any host account with uid 1000). One user holding 128 instances (a few
    lines of code, or 128 `inotifyd`) leaves every other workspace unable to watch files: VS Code's file watcher and
    every dev server's reload fail with EMFILE."""
    from tests.factories import MembershipFactory, TenantFactory

    tiny_template.pids_limit = 256
    tiny_template.save()
    a = MembershipFactory(tenant=tenant_e)
    other = MembershipFactory(tenant=TenantFactory())
    ca = services.workspace_open(workspace=make_workspace(a, "a"), user=a.user).session.container
    cb = services.workspace_open(workspace=make_workspace(other, "b"), user=other.user).session.container
    ca = Container.objects.select_related("node").get(pk=ca.pk)
    cb = Container.objects.select_related("node").get(pk=cb.pk)
    limit = int(Path("/proc/sys/fs/inotify/max_user_instances").read_text())
    if limit > 200:
        pytest.skip(f"fs.inotify.max_user_instances is {limit} here: too many processes to hold them all")
    # Tenant A's user holds every instance their uid may have (one busybox inotifyd each).
    code, out = _exec(node, ca, f"i=0; while [ $i -lt {limit + 5} ]; do inotifyd true /tmp & i=$((i+1)); done; "
                                "sleep 1; echo started")
    assert code == 0, out
    time.sleep(1)
    # Tenant B, another tenant's workspace, can still watch a file.
    code, out = _exec(node, cb, "timeout 2 inotifyd true /tmp; echo rc=$?")
    assert "rc=143" in out or "rc=124" in out, f"another tenant's workspace cannot use inotify: {out.strip()}"
