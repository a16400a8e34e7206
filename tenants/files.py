"""Walking a tenant's files on the host: at any depth and path length, never following a symlink.

Users shape their own trees (`mkdir d && cd d` in a loop makes one thousands of levels deep, or longer than
PATH_MAX), and Hearth reads them as root to measure storage and to export a tenant. shutil and tarfile recurse once
per level (RecursionError) and os.scandir by path fails past 4,096 characters (ENAMETOOLONG). This walk keeps one
directory open, goes down with openat(O_NOFOLLOW) and back up with openat(".."), checking each directory is the
one it left, and stays on the root's file system.
"""
import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeChanged(OSError):
    """A directory was moved while the walk was inside it: the way back up no longer leads where it came from."""


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the root, "/"-separated
    name: str
    dir_fd: int  # the directory holding it: valid only until the walk goes on
    stat: os.stat_result  # lstat: a symlink is reported as one, never followed

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.stat.st_mode)

    def is_file(self) -> bool:
        return stat.S_ISREG(self.stat.st_mode)


def _names(fd) -> list[str]:
    with os.scandir(fd) as it:
        names = [entry.name for entry in it]
    names.sort(reverse=True)  # popped from the end: alphabetical order
    return names


def _identity(st) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def tree_walk(root) -> Iterator[Entry]:
    """Every entry below `root` (not root itself), parents before their contents. Entries removed while walking
    are skipped; a directory replaced by a symlink is reported as the symlink and not entered; a directory on
    another file system is reported but not entered. Raises TreeChanged if a directory the walk is in was moved."""
    fd = os.open(root, _DIR_FLAGS)
    try:
        root_stat = os.fstat(fd)
        # One level per directory the walk is in: its identity, the names still to visit, its relative path.
        levels = [(_identity(root_stat), _names(fd), "")]
        while levels:
            _, names, relative = levels[-1]
            if not names:
                levels.pop()
                if levels:
                    parent = os.open("..", _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = parent
                    if _identity(os.fstat(fd)) != levels[-1][0]:
                        raise TreeChanged(errno.ESTALE, f"{levels[-1][2] or '.'} was moved during the walk", root)
                continue
            name = names.pop()
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            path = f"{relative}/{name}" if relative else name
            yield Entry(path, name, fd, st)
            if not stat.S_ISDIR(st.st_mode) or st.st_dev != root_stat.st_dev:
                continue
            try:
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    continue  # removed, or swapped for a file or a symlink since the stat
                raise
            child_stat = os.fstat(child)
            if _identity(child_stat) != _identity(st):
                os.close(child)  # swapped for another directory since the stat
                continue
            os.close(fd)
            fd = child
            levels.append((_identity(child_stat), _names(fd), path))
    finally:
        os.close(fd)


def tree_bytes(root) -> int:
    """The size of the regular files below `root` (0 if it does not exist)."""
    try:
        return sum(entry.stat.st_size for entry in tree_walk(root) if entry.is_file())
    except FileNotFoundError:
        return 0
