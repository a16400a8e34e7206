"""The gateway's egress log: one line per finished stream of a session, `hearth-egress <session> <bytes> …`, with
the bytes HAProxy sent to the client (`%B`) and a few fields the open's trace reads, written by HAProxy itself to
its standard output, a file in the run dir.

Why a log and not the stick-table counters: a table lives in its worker. A stopping worker drops its entries the
moment their last stream ends, so what it counts after a reload (a WebSocket open across it, counted when it
closes) was never read, and a killed gateway took everything since the last tick with it. A log line is written
by whichever worker ends the stream, old ones too (they keep the inherited descriptor), and once written it is in
the file (the kernel's), whatever happens to HAProxy or to Hearth afterwards: only streams still open when
HAProxy is killed are lost — their bytes were never counted anywhere.

Each start of the gateway writes a new file (`<run dir>/egress/<start ns>.log`). The reader keeps a cursor (file,
offset) that metering stores in the same transaction as the bytes it records (workspaces.egress), and reads up to
the last complete line. Files before the cursor's are consumed and removed. The live file cannot be rotated (it is
HAProxy's standard output, held by every worker until the gateway stops), so the part before the cursor is given
back to the file system instead: its blocks are punched out (a sparse file of the same length: offsets stay valid,
O_APPEND writes go on at the end), and a gateway that runs for months holds on disk only what is not yet metered.
"""
import ctypes
import errno
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "hearth-egress"
# HAProxy's log-format: only streams that passed the token checks and were counted for a session get a log level
# that writes them (the frontend sets `silent` first); the session id is the route's ([A-Za-z0-9_-]{1,64}).
# After the bytes, for the open's trace (workspaces/gateway/tracing.py): 1 on a session's first request (else "-"),
# the accept time (s, ms), the active time (ms), status, method and path.
LOG_FORMAT = f"{PREFIX} %[var(txn.metered)] %B %[var(txn.first)] %Ts %ms %Ta %ST %HM %HP"
_LINE_RE = re.compile(rf"^{PREFIX} ([A-Za-z0-9_-]{{1,64}}) (\d+)(?: .*)?$")


@dataclass(frozen=True)
class Cursor:
    file: str = ""  # a file name in the directory ("" before the first read)
    offset: int = 0


@dataclass
class Chunk:
    bytes_by_session: dict
    cursor: Cursor
    lines: int


def directory(run_dir: Path) -> Path:
    return Path(run_dir) / "egress"


def log_open(run_dir: Path) -> int:
    """A new log file for a gateway that starts now: a descriptor to give HAProxy as its standard output
    (O_APPEND: every worker's line lands whole at the end)."""
    path = directory(run_dir)
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return os.open(path / f"{time.time_ns():020d}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)


def _files(run_dir: Path) -> list[str]:
    path = directory(run_dir)
    if not path.is_dir():
        return []
    return sorted(p.name for p in path.glob("*.log"))


def read(run_dir: Path, cursor: Cursor, *, max_bytes: int = 4 << 20) -> Chunk:
    """The complete lines after `cursor` (at most about `max_bytes`), summed per session, and the cursor after them.
    A file older than the newest is complete (its gateway is gone); the newest may have a line being written."""
    files = [name for name in _files(run_dir) if name >= cursor.file]
    totals, lines, position = {}, 0, cursor
    for index, name in enumerate(files):
        offset = position.offset if name == position.file else 0
        with open(directory(run_dir) / name, "rb") as f:
            f.seek(offset)
            data = f.read(max_bytes)
            at_end = f.read(1) == b""
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            m = _LINE_RE.match(raw.decode("ascii", "replace").strip())
            if m is None:
                continue  # HAProxy's own notices ("Proxy … stopped") share its standard output
            totals[m.group(1)] = totals.get(m.group(1), 0) + int(m.group(2))
            lines += 1
        position = Cursor(name, offset + end)
        max_bytes -= len(data)
        if index == len(files) - 1 or not at_end or max_bytes <= 0:
            break
        # Read to its end, and a newer file exists: this gateway is gone (an unfinished last line of a killed one
        # is nothing: HAProxy writes a line in one write). On with the next file.
    return Chunk(bytes_by_session=totals, cursor=position, lines=lines)


# fallocate(2) modes (linux/falloc.h): free a range's blocks, keep the file's length.
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
PUNCH_MIN_BYTES = 1 << 20  # below this much metered text a hole is not worth a syscall per tick
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]


def prune(run_dir: Path, cursor: Cursor) -> int:
    """Remove the files wholly before the cursor's (read and recorded), and punch out the cursor file's blocks
    before the cursor (`punch`)."""
    removed = 0
    for name in _files(run_dir):
        if cursor.file and name < cursor.file:
            (directory(run_dir) / name).unlink(missing_ok=True)
            removed += 1
    if cursor.file:
        punch(directory(run_dir) / cursor.file, cursor.offset)
    return removed


def punch(path: Path, offset: int) -> int:
    """Free the whole file-system blocks of `path` before `offset` (read and recorded); the bytes freed (0 when
    under PUNCH_MIN_BYTES, or already punched). A file system without hole punching keeps the file whole: the log
    then grows until the gateway restarts, as before (logged once per call, not an error)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return 0
    end = offset - offset % (st.st_blksize or 4096)
    held = st.st_blocks * 512 - max(0, st.st_size - end)  # roughly what is allocated before `end`
    if end < PUNCH_MIN_BYTES or held < PUNCH_MIN_BYTES:
        return 0
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        if _libc.fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, 0, end) != 0:
            err = ctypes.get_errno()
            if err in (errno.EOPNOTSUPP, errno.ENOSYS):
                log.info("the file system of %s cannot punch holes: the egress log is removed at the next restart",
                         path)
                return 0
            raise OSError(err, os.strerror(err), str(path))
    finally:
        os.close(fd)
    return end
