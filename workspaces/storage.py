"""Late-bound user storage: slots under an rshared root, the user's directory bind-mounted onto a slot at claim.

Each warm container gets `STORAGE_ROOT/slots/<key>` mounted rslave at its home. At claim the user's directory
(`STORAGE_ROOT/tenants/<tenant>/users/<user>/<workspace>`) is bind-mounted onto the slot on the host and
appears inside the running container at once; at release it is unmounted and the container sees the empty
slot again. Mounting needs root (CAP_SYS_ADMIN on the host).
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import threading
from pathlib import Path

from django.conf import settings

# The uid/gid the workspace images run as (see workspaces.runtime.docker.WORKSPACE_USER).
WORKSPACE_UID = 1000
WORKSPACE_GID = 1000
# Written into the user's directory before each bind: an entrypoint that waits for it knows the home is there.
READY_MARKER = ".hearth-ready"

MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SHARED = 1 << 20
MNT_DETACH = 2
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_root_ready: set[str] = set()
_root_lock = threading.Lock()


class StorageError(Exception):
    """A slot could not be prepared, bound or released."""


def _mount(source, target, flags) -> None:
    if _libc.mount(os.fsencode(source) if source else None, os.fsencode(target), None, flags, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM or (err == errno.EACCES and os.geteuid() != 0):
            raise StorageError(
                f"mount {source} -> {target}: permission denied ({os.strerror(err)}). Late-bound storage mounts on "
                "the host: run the Hearth worker and web processes as root (or with CAP_SYS_ADMIN)."
            )
        raise StorageError(f"mount {source or ''} -> {target} failed: {os.strerror(err)}")


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mountinfo() -> list[tuple[str, str]]:
    """(mount point, optional fields) for each mount of this process, innermost last."""
    rows = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            sep = fields.index("-")
            rows.append((_unescape(fields[4]), " ".join(fields[6:sep])))
    return rows


def is_mount_point(path: Path) -> bool:
    path = os.path.realpath(path)
    return any(point == path for point, _ in _mountinfo())


def _is_shared_mount_point(path: str) -> bool:
    top = [opts for point, opts in _mountinfo() if point == path]
    return bool(top) and "shared:" in top[-1]


def slot_root() -> Path:
    """STORAGE_ROOT/slots, made a mount point (bound onto itself) and rshared once; idempotent."""
    root = Path(settings.STORAGE_ROOT) / "slots"
    key = os.path.realpath(root)
    if key in _root_ready:
        return root
    root.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(root)
    # Web and worker processes start together: one at a time, or both would bind the root onto itself.
    with _root_lock, open(os.path.join(os.path.dirname(key), ".slots.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if key in _root_ready:
            return root
        if not _is_shared_mount_point(key):
            if not is_mount_point(root):
                _mount(key, key, MS_BIND)
            # Private first: under a shared parent (systemd's /) the self-bind would join the parent's peer
            # group and every slot bind would propagate there too. Then shared, as a peer group of its own.
            _mount(None, key, MS_PRIVATE)
            _mount(None, key, MS_SHARED | MS_REC)
        _root_ready.add(key)
    return root


def slot_root_release(root: Path | None = None) -> None:
    """Unmount every slot and the slot root itself (teardown of an install or a test)."""
    root = os.path.realpath(root or Path(settings.STORAGE_ROOT) / "slots")
    for point, _ in reversed(_mountinfo()):
        if point == root or point.startswith(root + "/"):
            _umount(point)
    _root_ready.discard(root)


def slot_create(key: str) -> Path:
    """An empty slot directory `STORAGE_ROOT/slots/<key>` owned by the workspace user."""
    if not _KEY.match(key):
        raise StorageError(f"bad slot key {key!r}: letters, digits, '.', '_' and '-' only")
    slot = slot_root() / key
    slot.mkdir(exist_ok=True)
    os.chown(slot, WORKSPACE_UID, WORKSPACE_GID)
    return slot


def _ensure_source(source: Path) -> None:
    if not source.is_dir():
        source.mkdir(parents=True, exist_ok=True)
        source.chmod(0o750)
    st = source.stat()
    if (st.st_uid, st.st_gid) != (WORKSPACE_UID, WORKSPACE_GID):  # e.g. made by an import or a restore as root
        os.chown(source, WORKSPACE_UID, WORKSPACE_GID)
    marker = source / READY_MARKER
    try:
        if not stat.S_ISLNK(os.lstat(marker).st_mode):
            return
        os.unlink(marker)  # the user's own symlink: never follow it as root
    except FileNotFoundError:
        pass
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.fchown(fd, WORKSPACE_UID, WORKSPACE_GID)
    os.close(fd)


def slot_bind(*, slot: Path, source: Path) -> None:
    """Bind the user's directory onto the slot; it shows up in the slot's container at once.

    The source is created if missing, made the workspace user's, and gets the ready marker before the
    bind, so the marker appears in the container atomically with the files. A slot already bound is
    unbound first, so binds never stack.
    """
    slot, source = Path(slot), Path(source)
    root = os.path.realpath(slot_root())
    real_slot = os.path.realpath(slot)
    if os.path.dirname(real_slot) != root:
        raise StorageError(f"{slot} is not a slot under {root}")
    if not os.path.isdir(real_slot):
        raise StorageError(f"slot {slot} does not exist (slot_create it first)")
    _ensure_source(source)
    mounts = _mountinfo()
    root_mounts = [optional for point, optional in mounts if point == root]
    if not root_mounts or "shared:" not in root_mounts[-1]:
        # Someone unmounted the root since this process prepared it: a bind now would not reach containers.
        raise StorageError(f"slot root {root} is no longer an rshared mount point; restart the worker to redo it")
    if any(point == real_slot for point, _ in mounts):
        _umount(real_slot)
    _mount(os.path.realpath(source), real_slot, MS_BIND)


def _umount(target: str) -> None:
    if _libc.umount2(os.fsencode(target), 0) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY:  # something still has a file open on it: detach now, free when released
        if _libc.umount2(os.fsencode(target), MNT_DETACH) == 0:
            return
        err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOENT):  # not a mount point (already unbound) or gone
        return
    if err == errno.EPERM:
        raise StorageError(f"umount {target}: permission denied (run as root)")
    raise StorageError(f"umount {target} failed: {os.strerror(err)}")


def slot_unbind(*, slot: Path) -> None:
    """Unbind whatever is bound on the slot (all stacked binds); a slot that is not bound is fine."""
    real_slot = os.path.realpath(slot)
    for _ in range(8):
        if not is_mount_point(real_slot):
            return
        _umount(real_slot)
    raise StorageError(f"slot {slot} is still mounted after 8 unmounts")


def slot_remove(slot: Path) -> None:
    """Unbind and delete the slot directory; a missing slot is fine. Never touches the user's files.

    What a container wrote into its slot before any bind (a code-server started warm writes its config there)
    is deleted with the slot, once nothing is mounted on or under it.
    """
    slot_unbind(slot=slot)
    real_slot = os.path.realpath(slot)
    if any(point == real_slot or point.startswith(real_slot + "/") for point, _ in _mountinfo()):
        raise StorageError(f"slot {slot} still has something mounted under it; not deleting")
    try:
        os.rmdir(real_slot)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOTEMPTY:
            raise StorageError(f"cannot remove slot {slot}: {exc.strerror}") from exc
        shutil.rmtree(real_slot)


def user_storage_path(*, tenant_slug: str, user_id, workspace_id) -> Path:
    """Where one user's state for one workspace lives: STORAGE_ROOT/tenants/<t>/users/<u>/<w>."""
    for part in (tenant_slug, str(user_id), str(workspace_id)):
        if not _KEY.match(part):
            raise StorageError(f"bad storage path component {part!r}")
    return Path(settings.STORAGE_ROOT) / "tenants" / tenant_slug / "users" / str(user_id) / str(workspace_id)
