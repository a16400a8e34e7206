"""Isolation from a hostile user: what a user with a shell in their workspace (deep trees, symlinks, mounts, kernel
limits) or a colleague without a role can make Hearth's host-side code do. Real Docker, real PostgreSQL, the tiny
image.
"""
import os
import time
from pathlib import Path

import pytest

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_runtime import cgroup_limits, docker_exec
from workspaces import reconciler, services, storage
from workspaces.models import Container, Session
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]
State = Container.State

# Deeper than Python 3.11's recursion limit (1000): shutil.rmtree and tarfile.add recurse once per level.
DEEP = 1200


@pytest.fixture(autouse=True)
def _no_deep_trees_left(tmp_path):
    """pytest deletes old temporary directories with shutil.rmtree, which a 1,200-level tree breaks (RecursionError at
    the end of any later session on this machine): remove this test's trees with rm(1), which has no depth limit.
    Torn down after pool_env has unmounted the slots; anything still mounted under the directory is left alone."""
    yield
    import subprocess

    root = str(tmp_path)
    if not any(point.startswith(root + "/") for point, _ in storage._mountinfo()):
        subprocess.run(["rm", "-rf", "--one-file-system", root], check=False, timeout=120)


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
    reconciler.reconcile()  # raised RecursionError on every tick before the fix


def test_remove_tree_never_follows_a_symlink_out_of_the_tree(pool_env, tmp_path):
    """What remove_tree (the fix above) must keep from shutil.rmtree: links to files and directories outside the tree,
    and the tree's top itself replaced by a link, are unlinked and never followed."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("x")
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "to-dir").symlink_to(outside)
    (tree / "a" / "to-file").symlink_to(outside / "precious")
    (tree / "to-root").symlink_to("/")
    _deep_tree(tree / "a", depth=50)
    storage.remove_tree(tree)
    assert not tree.exists()
    link = tmp_path / "link"
    link.symlink_to(outside)
    storage.remove_tree(link)
    assert not link.exists()
    assert (outside / "precious").read_text() == "x"


def test_a_bind_landing_while_a_slot_is_deleted_never_deletes_the_users_files(pool_env, monkeypatch, tmp_path):
    """Defect: slot_remove checked /proc/self/mountinfo, then (after an rmdir saying "not empty") ran shutil.rmtree on
    the slot path. A user's directory bound onto the slot in between (a resume or an open racing the release) was
    deleted through the bind. Here the bind lands right after that rmdir."""
    slot = storage.slot_create("c999001")
    (slot / "written-before-the-bind").write_text("config")
    home = storage.user_storage_path(tenant_slug="acme", user_id=1, workspace_id=1)
    home.mkdir(parents=True)
    (home / "thesis.tex").write_text("years of work")
    real_rmdir, landed = os.rmdir, []

    def rmdir_then_bind(path, *args, **kwargs):
        try:
            return real_rmdir(path, *args, **kwargs)
        finally:
            if not landed and not args and not kwargs and os.fspath(path) == os.path.realpath(slot):
                landed.append(True)
                storage.slot_bind(slot=slot, source=home)  # the racing open's bind

    monkeypatch.setattr(os, "rmdir", rmdir_then_bind)
    try:
        with pytest.raises((storage.StorageError, OSError)):
            storage.slot_remove(slot)
    finally:
        monkeypatch.undo()
        assert landed
        intact = (home / "thesis.tex").exists()
        storage.slot_unbind(slot=slot)
        storage.slot_remove(slot)
    assert intact, "the user's files were deleted through the bind"
    assert (home / "thesis.tex").read_text() == "years of work"


def test_storage_measurement_counts_files_under_a_long_path(node, tiny_template, workspace):
    """Defect (fixed: tenants.files.tree_walk): metering.services._directory_bytes walked by full path names, and a path
    longer than PATH_MAX (4096) raises ENAMETOOLONG, which it does not catch. A user who nests a few directories
    with 200-character names in their home makes storage_sample raise for their whole tenant every hour: the tenant
    is never billed for storage."""
    from metering import services as metering_services

    home = Path(workspace.storage_path)
    home.mkdir(parents=True, exist_ok=True)
    size = _deep_tree(home, depth=25, name="d" * 200, leaf=10**6)
    assert metering_services.storage_sample(tenant=workspace.tenant) >= size


def test_offboarding_exports_a_tenant_with_a_deep_tree(node, tiny_template, workspace, member):
    """Defect (fixed: the export walks with tenants.files.tree_walk): tarfile.add recursed once per directory level,
    so the export of a tenant with a user's 1,200-level tree raised RecursionError and tenant_offboard could not
    complete."""
    from tenants import services as tenant_services
    from tenants.models import Membership, Role

    home = Path(workspace.storage_path)
    home.mkdir(parents=True, exist_ok=True)
    _deep_tree(home)
    owner = Membership.objects.filter(tenant=workspace.tenant, role=Role.OWNER).first()
    if owner is None:
        member.role = Role.OWNER
        member.save()
        owner = member
    export = tenant_services.tenant_offboard(tenant=workspace.tenant, actor=owner.user)
    assert Path(export.path).exists()


# --- a colleague, and the container's walls ------------------------------------------------------------------------


def test_a_colleague_without_a_role_cannot_touch_a_members_workspace_or_session(make_api_client, client, workspace,
                                                                                 member, node, tiny_template):
    """Held up in review (no defect): a plain member of the same tenant gets 404 on every verb of another member's
    workspace and session in the API (the portal answers 'No such ...'), and nothing changes; a forged cursor stays
    in scope."""
    import base64
    import json

    from tests.factories import MembershipFactory
    from workspaces.models import Workspace

    session = services.workspace_open(workspace=workspace, user=member.user).session
    colleague = MembershipFactory(tenant=member.tenant, role="member")
    api = make_api_client(colleague)
    for method, url in [
        ("get", f"/api/v1/workspaces/{workspace.pk}"),
        ("delete", f"/api/v1/workspaces/{workspace.pk}?confirm={workspace.name}"),
        ("post", f"/api/v1/workspaces/{workspace.pk}/open"),
        ("get", f"/api/v1/sessions/{session.pk}"),
        ("post", f"/api/v1/sessions/{session.pk}/close"),
        ("post", f"/api/v1/sessions/{session.pk}/heartbeat"),
    ]:
        assert getattr(api, method)(url).status_code == 404, (method, url)
    cursor = base64.urlsafe_b64encode(json.dumps(["2999-01-01T00:00:00+00:00",
                                                  "ffffffff-ffff-ffff-ffff-ffffffffffff"]).encode()).decode()
    assert api.get(f"/api/v1/sessions?after={cursor.rstrip('=')}").json() == []
    ws_cursor = base64.urlsafe_b64encode(json.dumps([str(workspace.pk + 1)]).encode()).decode().rstrip("=")
    assert api.get(f"/api/v1/workspaces?after={ws_cursor}").json() == []
    client.force_login(colleague.user)
    for url, data in [(f"/workspaces/{workspace.pk}/delete", {"confirm": workspace.name}),
                      (f"/workspaces/sessions/{session.pk}/close", {}), (f"/workspaces/{workspace.pk}/open", {})]:
        assert b"No such" in client.post(url, data, follow=True).content, url  # the portal's "not found" message
    session.refresh_from_db()
    assert session.ended_at is None and Workspace.objects.get(pk=workspace.pk).deleted_at is None


def test_a_workspace_shell_cannot_mount_unshare_or_reach_the_hosts_services(node, tiny_template, workspace, member):
    """Held up in review (no defect), checked from a claimed container's shell: no mount or umount (so the bare slot
    under the bind cannot be uncovered by unmounting), /proc/sys read-only, no user or network namespaces, no packet
    sockets (arping), only the container's own processes in /proc (no other container's /proc/<pid>/root), IPv6
    off (no link-local path around the IPv4 ICC rules), and the host's PostgreSQL and Redis (127.0.0.1 only) are
    not reachable through the bridge's gateway."""
    session = services.workspace_open(workspace=workspace, user=member.user).session
    container = Container.objects.select_related("node").get(pk=session.container_id)
    refused = {
        "mount": "mkdir -p /tmp/m && mount -t tmpfs none /tmp/m",
        "umount": "umount -l /home/coder",
        "proc-sys": "echo 1 > /proc/sys/vm/drop_caches",
        "userns": "unshare -U true",
        "netns": "unshare -n true",
        "packet-socket": "arping -c 1 -w 1 -I eth0 $(ip route | awk '/default/{print $3}')",
        "postgres": "nc -w 2 $(ip route | awk '/default/{print $3}') 5432 </dev/null",
        "redis": "nc -w 2 $(ip route | awk '/default/{print $3}') 6379 </dev/null",
    }
    for what, script in refused.items():
        code, out = _exec(node, container, f"timeout 5 sh -c {_quote(script)}")
        assert code != 0, (what, out)
    _, procs = _exec(node, container, "cat /proc/[0-9]*/comm")
    assert not {"dockerd", "containerd", "postgres", "redis-server", "haproxy"} & set(procs.split()), procs
    assert len(procs.split()) < 30, procs  # the host runs hundreds
    _, v6 = _exec(node, container, "cat /proc/sys/net/ipv6/conf/all/disable_ipv6; ip -6 addr | grep -c inet6")
    assert v6.split() == ["1", "0"], v6


def _quote(script):
    return "'" + script.replace("'", "'\\''") + "'"


# --- hardening: limits shared by every workspace ------------------------------------------------------------------


def test_one_workspace_cannot_use_up_inotify_for_all_others(node, tiny_template, tenant_e, make_workspace):
    """Defect (fixed: a host uid per container, the home idmapped to it): every workspace container ran as the same
    host uid 1000 without a user namespace, so the kernel's per-user inotify limits (fs.inotify.max_user_instances,
    128 here, and max_user_watches) were one pool shared by all tenants' workspaces (and any host account with uid
    1000). One user holding 128 instances (a few lines of C, Python or Node) left every other workspace unable to
    watch files: VS Code's file watcher and every dev server's reload failed with EMFILE."""
    from tests.factories import MembershipFactory, TenantFactory

    tiny_template.pids_limit = 256
    tiny_template.save()
    a = MembershipFactory(tenant=tenant_e)
    other = MembershipFactory(tenant=TenantFactory())
    ca = services.workspace_open(workspace=make_workspace(a, "a"), user=a.user).session.container
    cb = services.workspace_open(workspace=make_workspace(other, "b"), user=other.user).session.container
    ca = Container.objects.select_related("node").get(pk=ca.pk)
    cb = Container.objects.select_related("node").get(pk=cb.pk)
    probe = _inotify_probe()
    for container in (ca, cb):
        home = Path(Session.objects.get(container=container, ended_at__isnull=True).workspace.storage_path)
        (home / "probe").write_bytes(probe)  # what a user uploads into their home
        os.chmod(home / "probe", 0o755)
    # Tenant A's user holds every inotify instance their uid may have, for 30 s.
    exec_id = runtime_for(node).api.exec_create(ca.engine_id, ["/home/coder/probe", "100000", "30"])["Id"]
    runtime_for(node).api.exec_start(exec_id, detach=True)
    time.sleep(2)
    code, out = _exec(node, ca, "/home/coder/probe 1")
    assert out.strip() == "0", out  # A is at the limit
    # Another tenant's workspace can still watch a file.
    code, out = _exec(node, cb, "/home/coder/probe 1")
    assert out.strip() == "1", "another tenant's workspace got no inotify instance: the limit is shared"


PROBE_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/inotify.h>
int main(int argc, char **argv) {
    int want = atoi(argv[1]), made = 0;
    while (made < want && inotify_init() >= 0) made++;
    printf("%d\n", made);
    fflush(stdout);
    if (argc > 2) sleep(atoi(argv[2]));
    return 0;
}
"""


def _inotify_probe():
    """A static binary that creates up to N inotify instances and holds them (the tiny image has no compiler)."""
    import shutil
    import subprocess
    import tempfile

    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to build the inotify probe")
    with tempfile.TemporaryDirectory(prefix="hearth-probe-") as work:
        (Path(work) / "probe.c").write_text(PROBE_C)
        subprocess.run(["gcc", "-static", "-O1", "-o", f"{work}/probe", f"{work}/probe.c"], check=True,
                       capture_output=True, timeout=60)
        return (Path(work) / "probe").read_bytes()


def _host_uid(node, container):
    pid = runtime_for(node).api.inspect_container(container.engine_id)["State"]["Pid"]
    return os.stat(f"/proc/{pid}").st_uid


def test_two_tenants_workspaces_run_under_their_own_host_uids_and_keep_their_files(node, tiny_template, tenant_e,
                                                                                   make_workspace):
    """Each container has a host uid of its own, far from host accounts; inside, the home is the container's, and
    what it writes is stored for the one on-disk owner (1000), so the next open (another container, another uid)
    has the same files, writable."""
    from tests.factories import MembershipFactory, TenantFactory

    a = MembershipFactory(tenant=tenant_e)
    other = MembershipFactory(tenant=TenantFactory())
    wa = make_workspace(a, "a")
    sa = services.workspace_open(workspace=wa, user=a.user).session
    sb = services.workspace_open(workspace=make_workspace(other, "b"), user=other.user).session
    ca = Container.objects.select_related("node").get(pk=sa.container_id)
    cb = Container.objects.select_related("node").get(pk=sb.container_id)
    uid_a, uid_b = _host_uid(node, ca), _host_uid(node, cb)
    assert uid_a != uid_b
    assert min(uid_a, uid_b) >= 1_000_000_000
    import pwd

    assert not {uid_a, uid_b} & {entry.pw_uid for entry in pwd.getpwall()}
    code, out = _exec(node, ca, "id -u; stat -c %u /home/coder; echo mine > /home/coder/notes.txt && "
                                "stat -c %u /home/coder/notes.txt")
    assert code == 0 and out.split() == [str(uid_a)] * 3, out
    on_disk = Path(wa.storage_path) / "notes.txt"
    assert on_disk.stat().st_uid == storage.WORKSPACE_UID
    services.session_close(session=sa, actor=a.user)
    again = Container.objects.select_related("node").get(
        pk=services.workspace_open(workspace=wa, user=a.user).session.container_id)
    assert again.pk != ca.pk
    code, out = _exec(node, again, "cat /home/coder/notes.txt && echo more >> /home/coder/notes.txt && id -u")
    assert code == 0 and out.split() == ["mine", str(_host_uid(node, again))], out
    assert on_disk.read_text() == "mine\nmore\n"


def test_a_fork_flood_in_one_workspace_leaves_another_tenants_working(node, tiny_template, tenant_e, make_workspace):
    from tests.factories import MembershipFactory, TenantFactory

    a = MembershipFactory(tenant=tenant_e)
    other = MembershipFactory(tenant=TenantFactory())
    ca = services.workspace_open(workspace=make_workspace(a, "a"), user=a.user).session.container
    cb = services.workspace_open(workspace=make_workspace(other, "b"), user=other.user).session.container
    ca = Container.objects.select_related("node").get(pk=ca.pk)
    cb = Container.objects.select_related("node").get(pk=cb.pk)
    # Tenant A's user forks until refused, and keeps every process for 20 s.
    exec_id = runtime_for(node).api.exec_create(
        ca.engine_id, ["sh", "-c", "i=0; while [ $i -lt 500 ]; do sleep 20 & i=$((i+1)); done; wait"])["Id"]
    runtime_for(node).api.exec_start(exec_id, detach=True)
    time.sleep(2)
    code, _ = _exec(node, ca, "sleep 0 & sleep 0 & sleep 0 & wait")
    assert code != 0  # A is at its limit
    started = time.monotonic()
    code, out = _exec(node, cb, "i=0; while [ $i -lt 20 ]; do sleep 1 & i=$((i+1)); done; wait; echo done")
    assert code == 0 and out.strip() == "done", out
    assert time.monotonic() - started < 10


def test_a_claim_sets_the_plans_cpu_weight_and_caps(node, tiny_template, make_workspace):
    """Warm containers start at the template's limits (and a low CPU weight); the claim applies the plan's weights
    and the lower of its caps and the template's (Free: a quarter of the CPU weight, at most 1 core, 2 GB, 512
    processes; the tiny template is lower still in cpus, memory and pids)."""
    from tenants.models import Plan
    from tests.factories import MembershipFactory, TenantFactory

    Plan.objects.filter(slug="free").update(cpu_weight=256, io_weight=100, cpus=1, memory_mb=2048, pids_limit=32)
    free = MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="free")))
    big = MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="enterprise")))
    shown = {}
    for name, m in (("free", free), ("big", big)):
        container = services.workspace_open(workspace=make_workspace(m, name), user=m.user).session.container
        shown[name] = cgroup_limits(runtime_for(node), container.engine_id)
    assert shown["free"] == (256, int(0.10 * 1e9), 64, 32)
    assert shown["big"] == (Plan.objects.get(slug="enterprise").cpu_weight, int(0.10 * 1e9), 64, 64)


def test_a_refill_starts_at_a_low_cpu_weight_and_the_claim_raises_it(settings, node, tiny_template, make_workspace):
    """A refill's start competes with the claimed workspace's first page load on the same cores: warm containers
    start at WORKSPACES_WARM_CPU_WEIGHT, below every plan's, until their own claim; a cold start, which the user
    waits for, at the normal weight."""
    from tenants.models import Plan
    from tests.factories import MembershipFactory, TenantFactory
    from workspaces import pool
    from workspaces.pool import provisioning

    def shares(container):
        return cgroup_limits(runtime_for(node), container.engine_id)[0]

    settings.WORKSPACES_WARM_CPU_WEIGHT = 48
    pool.pool_fill(template_id=tiny_template.pk)
    warm = list(Container.objects.filter(template=tiny_template, state=Container.State.WARM))
    assert warm and {shares(c) for c in warm} == {48}
    free = MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="free")))
    claimed = services.workspace_open(workspace=make_workspace(free, "w"), user=free.user).session.container
    assert claimed.pk in {c.pk for c in warm}
    assert shares(claimed) == Plan.objects.get(slug="free").cpu_weight > 48
    cold = provisioning.container_provision(template=tiny_template, node=node, for_warm=False)
    assert shares(cold) == 1024
