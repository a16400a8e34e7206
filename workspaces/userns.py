"""The user namespaces of idmapped binds: a namespace whose map sends WORKSPACE_UID/GID to one container's host uid
is what `mount_setattr(MOUNT_ATTR_IDMAP)` is given when the user's directory is bound onto that container's slot.

Making one costs a child process (`unshare --user`: 2-3 ms of fork and exec here), so it is made when the container
is provisioned, off the open's path, and **pinned**: its namespace file is bind-mounted on `STORAGE_ROOT/userns/<slot
key>` (as `ip netns` pins network namespaces), where any process of the host opens it again at the claim (an open(2),
microseconds). The pin goes with the slot (`userns_unpin` at release; the reconciler removes pins of containers that
are gone). A container without a pin (provisioned before pins existed, or pinning failed) gets its namespace made at
the claim, as before, and kept in a small per-process cache (a resume binds the same uid again).
"""
from __future__ import annotations

import ctypes
import errno
import os
import subprocess
import threading
import time
from pathlib import Path

from django.conf import settings

# The owner of the users' files on disk (the images' `coder`); containers see it as their own uid through the bind.
WORKSPACE_UID = 1000
WORKSPACE_GID = 1000
MS_BIND = 4096
MNT_DETACH = 2

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]

# uid -> descriptor of an unpinned namespace made in this process.
_fds: dict[int, int] = {}
_lock = threading.Lock()
CACHED = 64


class UsernsError(Exception):
    """A user namespace could not be made or pinned."""


def pin_directory() -> Path:
    return Path(settings.STORAGE_ROOT) / "userns"


def _pin_path(key: str) -> Path:
    return pin_directory() / key


def _made(uid: int, then):
    """Make a namespace mapping WORKSPACE_UID/GID to `uid` in an `unshare --user` child and call `then(child pid)`
    while the child lives (its namespace file is /proc/<pid>/ns/user); the child is killed afterwards."""
    own = os.readlink("/proc/self/ns/user")
    child = subprocess.Popen(["unshare", "--user", "sleep", "30"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{child.pid}/ns/user") == own:  # until unshare(2) has run in the child
            if child.poll() is not None or time.monotonic() > deadline:
                raise UsernsError(f"unshare --user failed: {child.stderr.read().decode(errors='replace')}")
            time.sleep(0.0005)
        for name, line in (("uid_map", f"{WORKSPACE_UID} {uid} 1\n"), ("setgroups", "deny"),
                           ("gid_map", f"{WORKSPACE_GID} {uid} 1\n")):
            with open(f"/proc/{child.pid}/{name}", "w") as f:
                f.write(line)
        return then(child.pid)
    finally:
        child.kill()
        child.wait()


def userns_pin(*, key: str, uid: int) -> Path:
    """Make container `key`'s namespace (mapping to `uid`) and pin it at `STORAGE_ROOT/userns/<key>`."""
    path = _pin_path(key)
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    userns_unpin(key=key)  # a pin left by a crash is replaced, never stacked
    path.touch(mode=0o600)

    def pin(pid):
        if _libc.mount(f"/proc/{pid}/ns/user".encode(), os.fsencode(path), None, MS_BIND, None) != 0:
            raise UsernsError(f"pinning the user namespace of {key}: {os.strerror(ctypes.get_errno())}")

    try:
        _made(uid, pin)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def userns_unpin(*, key: str) -> None:
    """Remove container `key`'s pin (a missing one is fine)."""
    path = _pin_path(key)
    for _ in range(8):  # a crash between two pins may have stacked them
        if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err in (errno.EINVAL, errno.ENOENT):  # not a mount point, or no such file
                break
            raise UsernsError(f"unpinning the user namespace of {key}: {os.strerror(err)}")
    path.unlink(missing_ok=True)


def userns_pins() -> list[str]:
    """The keys of the pins on this host (the reconciler's view)."""
    directory = pin_directory()
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def userns_open(*, uid: int, key: str | None = None) -> tuple[int, bool]:
    """(descriptor, owned) of the namespace mapping WORKSPACE_UID to `uid`: container `key`'s pin if it has one
    (owned: the caller closes it), else one made now and cached in this process (not owned)."""
    if key is not None:
        try:
            fd = os.open(_pin_path(key), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            pass
        else:
            if _is_userns(fd):
                return fd, True
            os.close(fd)  # an empty file (a pin that failed half-way) or another mapping: made afresh below
    with _lock:
        fd = _fds.get(uid)
        if fd is None:
            fd = _made(uid, lambda pid: os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC))
            if len(_fds) >= CACHED:
                os.close(_fds.pop(next(iter(_fds))))
            _fds[uid] = fd
        return fd, False


def _is_userns(fd: int) -> bool:
    """The descriptor is a namespace (on the nsfs file system, as this process's own is), not the empty file under a
    pin that failed. (Its map is the one `userns_pin` wrote for the key's container, whose uid does not change.)"""
    try:
        return os.fstat(fd).st_dev == os.stat("/proc/self/ns/user").st_dev
    except OSError:
        return False


def cached_forget() -> None:
    """Close this process's cached namespaces (benchmarks that must not reuse them)."""
    with _lock:
        for fd in _fds.values():
            os.close(fd)
        _fds.clear()
