"""Late-bound user storage: slots under an rshared root, the user's directory bind-mounted onto a slot at claim,
idmapped to the container's own host uid.

Each warm container gets `STORAGE_ROOT/slots/<key>` mounted rslave at its home. At claim the user's directory
(`STORAGE_ROOT/tenants/<tenant>/users/<user>/<workspace>`) is bind-mounted onto the slot on the host and
appears inside the running container at once; at release it is unmounted and the container sees the empty
slot again. Mounting needs root (CAP_SYS_ADMIN on the host).

On disk a user's files always belong to uid 1000; each container runs under a host uid of its own (see
workspaces.pool.provisioning.container_uid), and the bind is an idmapped mount (open_tree, mount_setattr
MOUNT_ATTR_IDMAP, move_mount) that shows 1000 as that uid inside and stores that uid's writes as 1000.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import re
import stat
import struct
import subprocess
import threading
import time
from pathlib import Path

from django.conf import settings

from workspaces import userns as userns_mod
from workspaces.userns import WORKSPACE_GID, WORKSPACE_UID  # noqa: F401 (the owner of the users' files on disk)

log = logging.getLogger(__name__)

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
_root_paths: dict[str, tuple[Path, str]] = {}  # STORAGE_ROOT -> (slot root, its real path)
# Real path of a prepared slot root -> the mount id it had when /proc/self/mountinfo last showed it rshared.
_root_mount_ids: dict[str, int] = {}

# statx(2) (Linux 5.8+): whether a path is the root of a mount, and that mount's id, without reading
# /proc/self/mountinfo, whose size grows with every container on the host (two mounts each).
_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_STATX_TYPE = 0x1
_STATX_MNT_ID = 0x1000
_STATX_ATTR_MOUNT_ROOT = 0x2000
_statx = getattr(_libc, "statx", None)
if _statx is not None:
    _statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]


# The new mount API (Linux 5.12+ for idmapped mounts), x86-64 syscall numbers.
_SYS_OPEN_TREE, _SYS_MOVE_MOUNT, _SYS_MOUNT_SETATTR = 428, 429, 442
_OPEN_TREE_CLONE = 1
_OPEN_TREE_CLOEXEC = os.O_CLOEXEC
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_IDMAP = 0x00100000
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


class StorageError(Exception):
    """A slot could not be prepared, bound or released."""


def _mount_idmapped(source: str, target: str, uid: int) -> None:
    """Bind `source` onto `target` with WORKSPACE_UID shown (and stored) as `uid` (the namespace: the slot's pin,
    workspaces.userns)."""
    try:
        userns, owned = userns_mod.userns_open(uid=uid, key=os.path.basename(target))
    except userns_mod.UsernsError as exc:
        raise StorageError(str(exc)) from exc
    tree = _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, os.fsencode(source),
                         ctypes.c_uint(_OPEN_TREE_CLONE | _OPEN_TREE_CLOEXEC))
    if tree < 0:
        if owned:
            os.close(userns)
        raise StorageError(f"open_tree {source}: {os.strerror(ctypes.get_errno())}")
    try:
        attr = _MountAttr(attr_set=_MOUNT_ATTR_IDMAP, userns_fd=userns)
        if _libc.syscall(_SYS_MOUNT_SETATTR, tree, b"", ctypes.c_uint(_AT_EMPTY_PATH), ctypes.byref(attr),
                         ctypes.c_size_t(ctypes.sizeof(attr))) != 0:
            raise StorageError(f"idmap of {source} to uid {uid}: {os.strerror(ctypes.get_errno())} (the file "
                               "system must support idmapped mounts: ext4, xfs, btrfs on Linux 5.12+)")
        if _libc.syscall(_SYS_MOVE_MOUNT, tree, b"", _AT_FDCWD, os.fsencode(target),
                         ctypes.c_uint(_MOVE_MOUNT_F_EMPTY_PATH)) != 0:
            raise StorageError(f"move_mount {source} -> {target}: {os.strerror(ctypes.get_errno())}")
    finally:
        os.close(tree)
        if owned:
            os.close(userns)


def _mount(source, target, flags) -> None:
    if _libc.mount(os.fsencode(source) if source else None, os.fsencode(target), None, flags, None) != 0:
        err = ctypes.get_errno()
        if err == errno.EPERM or (err == errno.EACCES and os.geteuid() != 0):
            raise StorageError(
                f"mount {source} -> {target}: permission denied ({os.strerror(err)}). Late-bound storage mounts on "
                "the host: run the Hearth worker and web processes as root (or with CAP_SYS_ADMIN)."
            )
        raise StorageError(f"mount {source or ''} -> {target} failed: {os.strerror(err)}")


def _mount_state(path, *, follow=True):
    """(is a mount root, mount id, st_mode) of `path` via statx; None where statx cannot tell (old kernel)."""
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(256)
    flags = 0 if follow else _AT_SYMLINK_NOFOLLOW
    if _statx(_AT_FDCWD, os.fsencode(path), flags, _STATX_TYPE | _STATX_MNT_ID, buf) != 0:
        err = ctypes.get_errno()
        if err in (errno.ENOENT, errno.ENOTDIR):
            return False, 0, 0
        return None
    mask, = struct.unpack_from("I", buf, 0)
    attributes, = struct.unpack_from("Q", buf, 8)
    mode, = struct.unpack_from("H", buf, 28)
    attributes_mask, = struct.unpack_from("Q", buf, 56)
    mnt_id, = struct.unpack_from("Q", buf, 144)
    if not attributes_mask & _STATX_ATTR_MOUNT_ROOT or not mask & _STATX_MNT_ID:
        return None
    return bool(attributes & _STATX_ATTR_MOUNT_ROOT), mnt_id, mode


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
    state = _mount_state(path)
    if state is not None:
        return state[0]
    path = os.path.realpath(path)
    return any(point == path for point, _ in _mountinfo())


def _is_shared_mount_point(path: str) -> bool:
    top = [opts for point, opts in _mountinfo() if point == path]
    return bool(top) and "shared:" in top[-1]


def slot_root() -> Path:
    """STORAGE_ROOT/slots, made a mount point (bound onto itself) and rshared once; idempotent."""
    cached = _root_paths.get(str(settings.STORAGE_ROOT))
    if cached is not None and cached[1] in _root_ready:
        return cached[0]
    root = Path(settings.STORAGE_ROOT) / "slots"
    key = os.path.realpath(root)
    if key in _root_ready:
        _root_paths[str(settings.STORAGE_ROOT)] = (root, key)
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
        _root_paths[str(settings.STORAGE_ROOT)] = (root, key)
    return root


def slot_root_release(root: Path | None = None) -> None:
    """Unmount every slot, the slot root itself and the slots' pinned user namespaces beside it (teardown of an
    install or a test)."""
    root = os.path.realpath(root or Path(settings.STORAGE_ROOT) / "slots")
    pins = os.path.join(os.path.dirname(root), userns_mod.pin_directory().name)
    for point, _ in reversed(_mountinfo()):
        if point == root or point.startswith(root + "/") or point.startswith(pins + "/"):
            _umount(point)
    _root_ready.discard(root)
    _root_mount_ids.pop(root, None)
    _root_paths.clear()


def slot_create(key: str, *, uid: int = WORKSPACE_UID) -> Path:
    """An empty slot directory `STORAGE_ROOT/slots/<key>` owned by the container's uid, and the pinned user
    namespace of its idmapped bind (workspaces.userns)."""
    if not _KEY.match(key):
        raise StorageError(f"bad slot key {key!r}: letters, digits, '.', '_' and '-' only")
    slot = slot_root() / key
    slot.mkdir(exist_ok=True)
    os.chown(slot, uid, uid)
    if uid != WORKSPACE_UID:
        # The namespace its claim's idmapped bind needs, made now rather than on the open's path.
        try:
            userns_mod.userns_pin(key=key, uid=uid)
        except (userns_mod.UsernsError, OSError) as exc:  # the claim makes it instead
            log.warning("user namespace of slot %s not pinned: %s", key, exc)
    return slot


def _ensure_source(source: str) -> None:
    try:
        st = os.stat(source)
    except FileNotFoundError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        os.makedirs(source, exist_ok=True)
        os.chmod(source, 0o750)
        st = os.stat(source)
    if (st.st_uid, st.st_gid) != (WORKSPACE_UID, WORKSPACE_GID):  # e.g. made by an import or a restore as root
        os.chown(source, WORKSPACE_UID, WORKSPACE_GID)
    marker = os.path.join(source, READY_MARKER)
    try:
        if not stat.S_ISLNK(os.lstat(marker).st_mode):
            return
        os.unlink(marker)  # the user's own symlink: never follow it as root
    except FileNotFoundError:
        pass
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    os.fchown(fd, WORKSPACE_UID, WORKSPACE_GID)
    os.close(fd)


def _real_slot(slot: Path, root: str, root_path: Path) -> str:
    """The slot's real path. A slot is a plain directory right under the (real) root, so when the path names
    one, it is root + its name and the realpath walk (an lstat per component) is not needed."""
    path = os.path.abspath(slot)
    parent, name = os.path.split(path)
    if name and (parent == root or parent == str(root_path)):
        candidate = os.path.join(root, name)
        try:
            if stat.S_ISDIR(os.lstat(candidate).st_mode):
                return candidate
        except FileNotFoundError:
            return candidate
    return os.path.realpath(slot)


def _root_still_shared(root: str) -> bool:
    """The slot root is still the rshared mount point this process prepared.

    Fast path: statx says it is still the root of the very mount (same mount id) that mountinfo showed rshared
    before. Otherwise (first bind, a different mount, an old kernel) /proc/self/mountinfo decides.
    """
    state = _mount_state(root)
    known = _root_mount_ids.get(root)
    if state is not None and known is not None and state[0] and state[1] == known:
        return True
    root_mounts = [optional for point, optional in _mountinfo() if point == root]
    if not root_mounts or "shared:" not in root_mounts[-1]:
        return False
    if state is not None and state[0]:
        _root_mount_ids[root] = state[1]
    return True


def slot_bind(*, slot: Path, source: Path, uid: int | None = None) -> None:
    """Bind the user's directory onto the slot; it shows up in the slot's container at once.

    `uid`: the container's host uid; the bind is then idmapped (WORKSPACE_UID on disk shows as `uid`).

    The source is created if missing, made the workspace user's, and gets the ready marker before the
    bind, so the marker appears in the container atomically with the files. A slot already bound is
    unbound first, so binds never stack.
    """
    root_path = slot_root()
    root = _root_paths.get(str(settings.STORAGE_ROOT), (None, None))[1] or os.path.realpath(root_path)
    real_slot = _real_slot(slot, root, root_path)
    if os.path.dirname(real_slot) != root:
        raise StorageError(f"{slot} is not a slot under {root}")
    if not os.path.isdir(real_slot):
        raise StorageError(f"slot {slot} does not exist (slot_create it first)")
    source = os.fspath(source)
    _ensure_source(source)
    if not _root_still_shared(root):
        # Someone unmounted the root since this process prepared it: a bind now would not reach containers.
        raise StorageError(f"slot root {root} is no longer an rshared mount point; restart the worker to redo it")
    if is_mount_point(real_slot):
        _umount(real_slot)
    # mount(2) resolves the source's symlinks itself; the user cannot replace their directory (it is the home).
    if uid is None or uid == WORKSPACE_UID:
        _mount(source, real_slot, MS_BIND)
    else:
        _mount_idmapped(source, real_slot, uid)


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

    What a container wrote into its slot before any bind (a code-server started warm writes its config there, and a
    user reaches the bare slot through /proc/<pid>/cwd of any process started before the bind) is deleted with the
    slot, once nothing is mounted on or under it.
    """
    slot_unbind(slot=slot)
    try:
        userns_mod.userns_unpin(key=os.path.basename(slot))
    except userns_mod.UsernsError as exc:  # the reconciler's pass tries again
        log.warning("%s", exc)
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
        # The slot root's mount: a user's directory bound onto the slot since the check above is another mount,
        # and remove_tree then refuses instead of deleting the user's files.
        root_state = _mount_state(os.path.dirname(real_slot))
        remove_tree(real_slot, mount_id=root_state[1] if root_state else None)


_REMOVE_TREE_SECONDS = 120


def remove_tree(path, *, mount_id=None) -> None:
    """Delete a directory tree as root: never follows a symlink, and works at any depth. A missing path is fine.

    shutil.rmtree (Python 3.11) recurses once per directory level, so a user's `mkdir d && cd d` loop made it raise
    RecursionError. Here at most two directories are open: each subdirectory of the top's subdirectories is renamed
    up into the top (inside the tree: a rename never leaves its mount), its files unlinked, and the now empty
    directory removed, until the top is empty. Every open is relative to the tree's own descriptors with
    O_NOFOLLOW, so a symlink or a directory swapped for one is unlinked, never followed. `mount_id`: the mount the
    tree must be on (a directory bound onto `path` meanwhile is refused, not emptied).
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    try:
        top = os.open(path, flags)
    except FileNotFoundError:
        return
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(path)  # a symlink or a file where the directory was
        return
    prefix, serial = f".hearth-rm-{os.getpid()}-{time.monotonic_ns()}-", 0
    deadline = time.monotonic() + _REMOVE_TREE_SECONDS
    try:
        if mount_id is not None and _fd_mount_id(top) not in (None, mount_id):
            raise StorageError(f"{path} is another mount now (bound meanwhile?); not deleting it")
        while True:
            entries = _entries(top)
            if not entries:
                break
            if time.monotonic() > deadline:
                raise StorageError(f"{path} kept changing for {_REMOVE_TREE_SECONDS} s while being deleted")
            for name, is_dir in entries:
                if not is_dir:
                    _unlink_at(name, top)
                    continue
                try:
                    sub = os.open(name, flags, dir_fd=top)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    _unlink_at(name, top)  # swapped for a symlink or a file since the listing
                    continue
                try:
                    for inner, inner_is_dir in _entries(sub):
                        if not inner_is_dir:
                            _unlink_at(inner, sub)
                            continue
                        serial += 1
                        try:
                            os.rename(inner, f"{prefix}{serial}", src_dir_fd=sub, dst_dir_fd=top)
                        except FileNotFoundError:
                            pass
                finally:
                    os.close(sub)
                try:
                    os.rmdir(name, dir_fd=top)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
    finally:
        os.close(top)
    try:
        os.rmdir(path)
    except FileNotFoundError:
        pass


def _entries(fd) -> list[tuple[str, bool]]:
    with os.scandir(fd) as it:
        return [(entry.name, entry.is_dir(follow_symlinks=False)) for entry in it]


def _unlink_at(name, dir_fd) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        pass  # swapped for a directory since the listing: the next round takes it


def _fd_mount_id(fd) -> int | None:
    if _statx is None:
        return None
    buf = ctypes.create_string_buffer(256)
    if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_MNT_ID, buf) != 0:
        return None
    mask, = struct.unpack_from("I", buf, 0)
    return struct.unpack_from("Q", buf, 144)[0] if mask & _STATX_MNT_ID else None


def user_storage_path(*, tenant_slug: str, user_id, workspace_id) -> Path:
    """Where one user's state for one workspace lives: STORAGE_ROOT/tenants/<t>/users/<u>/<w>."""
    for part in (tenant_slug, str(user_id), str(workspace_id)):
        if not _KEY.match(part):
            raise StorageError(f"bad storage path component {part!r}")
    return Path(settings.STORAGE_ROOT) / "tenants" / tenant_slug / "users" / str(user_id) / str(workspace_id)


# --- size-limited user volumes -----------------------------------------------------------------------------------

# One inode per 8 KiB of a volume: a 100 MB plan gets 12,800 files, 5 GB 655,360.
VOLUME_BYTES_PER_INODE = 8192
_volume_lock = threading.Lock()


def _run(*args, timeout=120) -> str:
    done = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise StorageError(f"{' '.join(map(str, args))}: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def volume_image_path(user_dir) -> Path:
    """The image behind `STORAGE_ROOT/tenants/<t>/users/<u>`: `STORAGE_ROOT/volumes/<t>/<u>.img`."""
    tenants = Path(os.path.abspath(settings.STORAGE_ROOT)) / "tenants"
    try:
        tenant, users, user = Path(os.path.abspath(user_dir)).relative_to(tenants).parts
    except ValueError:
        raise StorageError(f"{user_dir} is not a user's directory under {tenants}") from None
    if users != "users" or not _KEY.match(tenant) or not _KEY.match(user):
        raise StorageError(f"{user_dir} is not a user's directory under {tenants}")
    return Path(settings.STORAGE_ROOT) / "volumes" / tenant / f"{user}.img"


def user_volume_ensure(*, user_dir, size_mb: int | None) -> None:
    """Make `user_dir` (all of one user's workspaces) a mounted ext4 image of at least `size_mb`; None: unlimited.

    Bytes and inodes are bounded at write time by the image (ENOSPC inside the workspace). A raised limit grows
    the image online (resize2fs) at the next open; a lowered one leaves it as it is. Files written before the
    user had a volume are moved into it (refused, with the directory left as it was, if they do not fit).
    """
    if size_mb is None:
        return
    user_dir = Path(user_dir)
    image = volume_image_path(user_dir)
    want = int(size_mb) * 1024 * 1024
    state = _mount_state(user_dir)
    if not (state and state[0]):
        image.parent.mkdir(parents=True, exist_ok=True)
        with _volume_lock, open(image.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not is_mount_point(user_dir):
                _volume_mount(user_dir, image, want)
    if image.stat().st_size < want:
        with _volume_lock, open(image.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if image.stat().st_size < want:
                _volume_grow(user_dir, image, want)


def _volume_mount(user_dir: Path, image: Path, want: int) -> None:
    if not image.exists():
        part = image.with_suffix(".part")
        with open(part, "wb") as f:
            f.truncate(want)
        _run("mkfs.ext4", "-q", "-F", "-m", "0", "-i", VOLUME_BYTES_PER_INODE,
             "-E", f"root_owner={WORKSPACE_UID}:{WORKSPACE_GID},nodiscard", part)
        os.rename(part, image)
    user_dir.mkdir(parents=True, exist_ok=True)
    with os.scandir(user_dir) as it:
        earlier = [entry.name for entry in it]
    if earlier:
        _volume_adopt(user_dir, image, earlier)
    _run("mount", "-o", "loop,nodev,nosuid", image, user_dir)


def _volume_adopt(user_dir: Path, image: Path, names: list[str]) -> None:
    """Copy what `user_dir` held before it had a volume into the image, then delete the originals."""
    staging = image.with_suffix(".adopt")
    staging.mkdir(exist_ok=True)
    _run("mount", "-o", "loop,nodev,nosuid", image, staging)
    try:
        _run("cp", "-a", "--one-file-system", "--", *(user_dir / name for name in names), staging, timeout=600)
    except StorageError as exc:
        raise StorageError(f"the files in {user_dir} do not fit in its {image.stat().st_size >> 20} MB: {exc}") \
            from exc
    finally:
        _umount(os.fspath(staging))
        os.rmdir(staging)
    for name in names:
        remove_tree(user_dir / name)


def _volume_grow(user_dir: Path, image: Path, want: int) -> None:
    """Grow the image and its file system to `want` bytes.

    Offline when nothing else has the file system mounted (unmount, e2fsck, resize2fs, mount again: about a second
    for small images); otherwise online, which needs CAP_SYS_RESOURCE. When neither can be done now (the user's
    other workspace is open on a host without that capability) the image stays as it is until a later open.
    """
    device = _run("losetup", "-j", image).split(":", 1)[0]
    if device and _mounts_of(user_dir) <= 1:
        _umount_strict(user_dir)
        device = ""
    if not device:
        with open(image, "r+b") as f:
            f.truncate(want)
        _run("e2fsck", "-f", "-p", image)
        _run("resize2fs", image)
        _run("mount", "-o", "loop,nodev,nosuid", image, user_dir)
        return
    old = image.stat().st_size
    with open(image, "r+b") as f:
        f.truncate(want)
    _run("losetup", "-c", device)
    try:
        _run("resize2fs", device)
    except StorageError as exc:
        with open(image, "r+b") as f:
            f.truncate(old)  # the file system never grew: the next open tries again
        _run("losetup", "-c", device)
        log.warning("could not grow %s while it is in use (%s); the next open grows it", image, exc)


def _mounts_of(path) -> int:
    """How many mounts (the volume itself, slot binds of it) show the file system mounted at `path`."""
    device = os.stat(path).st_dev
    wanted = f"{os.major(device)}:{os.minor(device)}"
    with open("/proc/self/mountinfo") as f:
        return sum(1 for line in f if line.split(" ", 3)[2] == wanted)


def _umount_strict(target) -> None:
    if _libc.umount2(os.fsencode(target), 0) != 0:
        raise StorageError(f"umount {target}: {os.strerror(ctypes.get_errno())}")


def user_volumes_release(*, tenant_dir) -> None:
    """Unmount every user volume under `tenant_dir` (or a whole `STORAGE_ROOT/tenants`); the images stay."""
    root = os.path.realpath(tenant_dir)
    for point, _ in reversed(_mountinfo()):
        if point.startswith(root + "/") and "/slots/" not in point:
            _umount(point)


def user_volume_delete(*, user_dir) -> None:
    """Delete one user's directory and, when it has one, its volume: unmounted (with every bind of it), then the
    image and its lock file. For a deleted user, whose sessions have ended."""
    user_dir = Path(user_dir)
    image = volume_image_path(user_dir)
    real = os.path.realpath(user_dir)
    for _ in range(8):
        if not is_mount_point(real):
            break
        _umount(real)
    else:
        raise StorageError(f"{user_dir} is still mounted after 8 unmounts")
    remove_tree(user_dir)
    for path in (image, image.with_suffix(".lock"), image.with_suffix(".part")):
        path.unlink(missing_ok=True)
