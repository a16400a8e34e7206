"""Late-bound storage: slots on the host, and what running containers see when a user's directory is bound."""
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from django.conf import settings

from tests.workspaces.fixtures_runtime import REPO, docker_exec
from workspaces import storage, userns
from workspaces.storage import StorageError


def _mounts_under(path):
    path = os.path.realpath(path)
    return [p for p, _ in storage._mountinfo() if p == path or p.startswith(path + "/")]


def _user_dir(tenant, user, workspace=1):
    return storage.user_storage_path(tenant_slug=tenant, user_id=user, workspace_id=workspace)


# --- on the host ---------------------------------------------------------------------------------


def test_slot_root_is_an_rshared_mount_point_made_once(slots):
    root = os.path.realpath(slots)
    assert slots == Path(settings.STORAGE_ROOT) / "slots"
    [(point, optional)] = [(p, o) for p, o in storage._mountinfo() if p == root]
    assert "shared:" in optional
    storage._root_ready.clear()  # a new process finds it already prepared and adds no mount
    assert storage.slot_root() == slots
    assert _mounts_under(slots) == [root]


def test_slot_is_owned_by_the_workspace_user(slots):
    slot = storage.slot_create("s-1")
    assert slot.parent == slots and slot.is_dir()
    assert (slot.stat().st_uid, slot.stat().st_gid) == (1000, 1000)
    assert storage.slot_create("s-1") == slot  # idempotent
    for bad in ("../escape", "a/b", "", ".hidden"):
        with pytest.raises(StorageError):
            storage.slot_create(bad)


def test_bind_shows_the_users_files_and_unbind_hides_them(slots):
    slot = storage.slot_create("s-2")
    source = _user_dir("acme", 7)
    storage.slot_bind(slot=slot, source=source)
    assert (source.stat().st_uid, source.stat().st_gid) == (1000, 1000)
    assert (source / storage.READY_MARKER).exists()
    (source / "notes.txt").write_text("mine")
    assert (slot / "notes.txt").read_text() == "mine"
    (slot / "written-through-slot.txt").write_text("x")
    assert (source / "written-through-slot.txt").exists()

    storage.slot_unbind(slot=slot)
    assert list(slot.iterdir()) == []
    storage.slot_unbind(slot=slot)  # idempotent
    assert (source / "notes.txt").read_text() == "mine"


def test_a_planted_marker_symlink_is_not_followed(slots, tmp_path):
    slot = storage.slot_create("s-8")
    source = _user_dir("acme", 9)
    source.mkdir(parents=True)
    victim = tmp_path / "victim"
    (source / storage.READY_MARKER).symlink_to(victim)  # made by the user inside their own home
    storage.slot_bind(slot=slot, source=source)
    assert not victim.exists()
    marker = source / storage.READY_MARKER
    assert marker.is_file() and not marker.is_symlink() and marker.stat().st_uid == 1000
    storage.slot_unbind(slot=slot)


def test_rebinding_a_slot_replaces_the_bind_instead_of_stacking(slots):
    slot = storage.slot_create("s-3")
    a, b = _user_dir("acme", 1), _user_dir("acme", 2)
    storage.slot_bind(slot=slot, source=a)
    storage.slot_bind(slot=slot, source=b)
    (b / "b.txt").write_text("b")
    assert [p.name for p in slot.iterdir() if p.name != storage.READY_MARKER] == ["b.txt"]
    assert _mounts_under(slot) == [os.path.realpath(slot)]
    storage.slot_unbind(slot=slot)
    assert list(slot.iterdir()) == []


def test_unbind_while_busy_detaches_lazily(slots):
    slot = storage.slot_create("s-4")
    source = _user_dir("acme", 3)
    storage.slot_bind(slot=slot, source=source)
    (source / "open.txt").write_text("held")
    held = open(slot / "open.txt")  # an open file keeps the mount busy
    old_cwd = os.getcwd()
    os.chdir(slot)
    try:
        storage.slot_unbind(slot=slot)
        assert not storage.is_mount_point(slot)
        assert held.read() == "held"  # the holder keeps its file until it lets go
    finally:
        os.chdir(old_cwd)
        held.close()
    assert list(slot.iterdir()) == []


def test_slot_remove_never_touches_the_users_files(slots):
    slot = storage.slot_create("s-5")
    source = _user_dir("acme", 4)
    storage.slot_bind(slot=slot, source=source)
    (source / "keep.txt").write_text("keep")
    storage.slot_remove(slot)
    assert not slot.exists()
    assert (source / "keep.txt").read_text() == "keep"
    storage.slot_remove(slot)  # idempotent


def test_slot_remove_deletes_what_was_written_before_the_bind(slots):
    slot = storage.slot_create("s-6")
    (slot / ".config").mkdir()
    (slot / ".config" / "config.yaml").write_text("written warm")
    source = _user_dir("acme", 6)
    storage.slot_bind(slot=slot, source=source)
    (source / "keep.txt").write_text("keep")
    storage.slot_remove(slot)
    assert not slot.exists()
    assert (source / "keep.txt").read_text() == "keep"


def test_bind_refuses_when_the_root_lost_its_propagation(slots):
    slot = storage.slot_create("s-7")
    storage.slot_root_release(slots)  # e.g. an operator unmounted it under a running worker
    storage._root_ready.add(os.path.realpath(slots))  # ... which still believes it prepared
    with pytest.raises(StorageError, match="no longer an rshared mount point"):
        storage.slot_bind(slot=slot, source=_user_dir("acme", 8))
    assert not storage.is_mount_point(slot)


def test_bind_refuses_paths_outside_the_slot_root(slots, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with pytest.raises(StorageError, match="not a slot"):
        storage.slot_bind(slot=outside, source=_user_dir("acme", 5))
    with pytest.raises(StorageError, match="does not exist"):
        storage.slot_bind(slot=slots / "missing", source=_user_dir("acme", 5))


def test_user_storage_path():
    path = storage.user_storage_path(tenant_slug="acme", user_id=12, workspace_id=34)
    assert path == Path(settings.STORAGE_ROOT) / "tenants" / "acme" / "users" / "12" / "34"
    for bad in ({"tenant_slug": "../x"}, {"user_id": "a/b"}, {"workspace_id": ".."}):
        with pytest.raises(StorageError):
            storage.user_storage_path(**{"tenant_slug": "acme", "user_id": 1, "workspace_id": 1, **bad})


def test_without_root_mounting_is_a_clear_error(tmp_path):
    target = tmp_path / "t"
    target.mkdir()
    code = (
        "import os, sys\n"
        "from workspaces import storage\n"
        "os.setgid(65534); os.setuid(65534)\n"
        "try:\n    storage._mount(sys.argv[1], sys.argv[1], storage.MS_BIND)\n"
        "except storage.StorageError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(target)], capture_output=True, text=True, cwd=REPO, timeout=30
    )
    assert "permission denied" in out.stdout and "root" in out.stdout, out


# --- inside running containers -------------------------------------------------------------------


def _get(container, path):
    try:
        with urllib.request.urlopen(f"http://{container.address}{path}", timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""


@pytest.mark.docker
def test_bound_files_appear_inside_at_once_and_writes_land_on_the_host(make_container, docker_runtime):
    container, slot = make_container()
    source = _user_dir("acme", 10)
    source.mkdir(parents=True)
    (source / "hello.txt").write_text("from A")
    assert _get(container, "/home/hello.txt")[0] == 404

    storage.slot_bind(slot=slot, source=source)
    assert _get(container, "/home/hello.txt") == (200, "from A")  # the server started before the bind sees it
    code, out = docker_exec(docker_runtime, container.engine_id, "cat", "/home/coder/hello.txt")
    assert (code, out) == (0, "from A")
    code, _ = docker_exec(docker_runtime, container.engine_id, "sh", "-c", "echo inside > /home/coder/made-inside.txt")
    assert code == 0
    made = source / "made-inside.txt"
    assert made.read_text() == "inside\n" and made.stat().st_uid == 1000

    storage.slot_unbind(slot=slot)
    assert _get(container, "/home/hello.txt")[0] == 404
    code, out = docker_exec(docker_runtime, container.engine_id, "ls", "-A", "/home/coder")
    assert (code, out) == (0, "")


def test_two_processes_preparing_the_root_at_once_mount_it_once(settings, tmp_path):
    """Web and worker start together: the root is bound onto itself exactly once."""
    settings.STORAGE_ROOT = tmp_path / "race-storage"
    code = (
        "import django, os; os.environ['DJANGO_SETTINGS_MODULE'] = 'config.settings.test'; django.setup()\n"
        "from django.conf import settings; settings.STORAGE_ROOT = os.environ['ROOT']\n"
        "from workspaces import storage; storage.slot_root()\n"
    )
    env = {**os.environ, "ROOT": str(settings.STORAGE_ROOT)}
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env) for _ in range(4)]
    try:
        assert [p.wait(60) for p in procs] == [0, 0, 0, 0]
        assert len(_mounts_under(settings.STORAGE_ROOT / "slots")) == 1
    finally:
        storage.slot_root_release(settings.STORAGE_ROOT / "slots")


@pytest.mark.docker
def test_release_while_the_workspace_holds_files_open(make_container, docker_runtime):
    """code-server keeps files in the home open: the unbind still succeeds and the container loses the home."""
    container, slot = make_container()
    source = _user_dir("acme", 40)
    storage.slot_bind(slot=slot, source=source)
    (source / "held.txt").write_text("held")
    holder = docker_runtime.api.exec_create(
        container.engine_id, ["sh", "-c", "exec 3</home/coder/held.txt; cd /home/coder; sleep 60"]
    )
    docker_runtime.api.exec_start(holder["Id"], detach=True)
    deadline = time.monotonic() + 10
    while not docker_runtime.api.exec_inspect(holder["Id"])["Running"] and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.2)
    storage.slot_unbind(slot=slot)
    assert not storage.is_mount_point(slot)
    assert _get(container, "/home/held.txt")[0] == 404
    code, out = docker_exec(docker_runtime, container.engine_id, "ls", "-A", "/home/coder")
    assert (code, out) == (0, "")
    assert (source / "held.txt").read_text() == "held"


@pytest.mark.docker
def test_another_users_container_never_sees_the_file(make_container, docker_runtime):
    a, slot_a = make_container()
    b, slot_b = make_container()
    dir_a, dir_b = _user_dir("acme", 21), _user_dir("acme", 22)
    storage.slot_bind(slot=slot_a, source=dir_a)
    storage.slot_bind(slot=slot_b, source=dir_b)
    (dir_a / "secret-a.txt").write_text("A only")

    assert _get(a, "/home/secret-a.txt") == (200, "A only")
    assert _get(b, "/home/secret-a.txt")[0] == 404
    code, out = docker_exec(docker_runtime, b.engine_id, "sh", "-c", "find / -xdev -name 'secret-a.txt' 2>/dev/null")
    assert out == ""
    code, out = docker_exec(docker_runtime, b.engine_id, "ls", "-A", "/home/coder")
    assert out.split() == [storage.READY_MARKER]


@pytest.mark.docker
def test_the_file_survives_the_container_and_is_there_in_the_next_one(make_container, docker_runtime):
    source = _user_dir("acme", 30)
    first, slot = make_container()
    storage.slot_bind(slot=slot, source=source)
    code, _ = docker_exec(docker_runtime, first.engine_id, "sh", "-c", "echo kept > /home/coder/work.txt")
    assert code == 0
    storage.slot_unbind(slot=slot)
    docker_runtime.remove(first.engine_id)
    storage.slot_remove(slot)
    assert (source / "work.txt").read_text() == "kept\n"

    second, slot2 = make_container()
    assert _get(second, "/home/work.txt")[0] == 404
    storage.slot_bind(slot=slot2, source=source)
    assert _get(second, "/home/work.txt") == (200, "kept\n")


# --- the user namespace of an idmapped bind, pinned at the slot's creation (workspaces.userns) ----------------------

def test_a_slot_for_its_own_uid_pins_its_namespace_and_the_bind_uses_it_without_a_child(slots, monkeypatch):
    uid = 1_999_000_123
    slot = storage.slot_create("c-pin-1", uid=uid)
    pin = userns.pin_directory() / "c-pin-1"
    assert pin.exists() and os.path.realpath(pin) in {p for p, _ in storage._mountinfo()}
    fd = os.open(pin, os.O_RDONLY)
    try:
        assert userns._is_userns(fd) and os.fstat(fd).st_ino != os.stat("/proc/self/ns/user").st_ino
    finally:
        os.close(fd)
    # The claim's bind opens the pin: no `unshare` child (it would fail the bind here).
    monkeypatch.setattr(userns.subprocess, "Popen", lambda *a, **k: pytest.fail("a namespace was made at the bind"))
    source = _user_dir("acme", 21)
    storage.slot_bind(slot=slot, source=source, uid=uid)
    (source / "mine.txt").write_text("on disk as 1000")
    os.chown(source / "mine.txt", 1000, 1000)
    assert (slot / "mine.txt").stat().st_uid == uid  # the map the pin holds: 1000 on disk shows as the uid

    storage.slot_remove(slot)
    assert not pin.exists() and os.path.realpath(pin) not in {p for p, _ in storage._mountinfo()}


def test_a_slot_without_a_pin_gets_its_namespace_at_the_bind(slots):
    uid = 1_999_000_124
    slot = storage.slot_create("c-pin-2", uid=uid)
    userns.userns_unpin(key="c-pin-2")  # e.g. provisioned before pins existed
    source = _user_dir("acme", 22)
    storage.slot_bind(slot=slot, source=source, uid=uid)
    (source / "f").write_text("x")
    os.chown(source / "f", 1000, 1000)
    assert (slot / "f").stat().st_uid == uid
    storage.slot_remove(slot)


def test_the_reconciler_removes_a_pin_whose_container_is_gone(slots, db):
    from workspaces import reconciler

    storage.slot_create("c9999991", uid=1_999_000_125)
    os.rmdir(slots / "c9999991")  # the slot went, its pin stayed (a crash between the two)
    assert "c9999991" in userns.userns_pins()
    reconciler._stale_slots_remove()
    assert "c9999991" not in userns.userns_pins()
