"""The gateway's egress log on disk: a gateway that runs for months holds only what is not yet metered.

The writer here is a descriptor opened as `log_open` opens HAProxy's standard output (O_APPEND, kept open while the
reader prunes); HAProxy itself writing through it is covered by tests/workspaces/test_egress.py.
"""
import os

from workspaces.gateway import egress_log


def _write(fd, session, count, size=100):
    line = f"{egress_log.PREFIX} {session} {size} - 1 2 3 200 GET /\n".encode()
    os.write(fd, line * count)
    return len(line) * count


def test_the_metered_part_of_the_live_file_is_given_back_and_reading_goes_on(tmp_path):
    fd = egress_log.log_open(tmp_path)
    try:
        written = _write(fd, "s1", 40_000)  # about 1.5 MiB
        chunk = egress_log.read(tmp_path, egress_log.Cursor())
        assert chunk.bytes_by_session == {"s1": 4_000_000}
        path = egress_log.directory(tmp_path) / chunk.cursor.file
        assert chunk.cursor.offset == written and os.stat(path).st_blocks * 512 >= written

        egress_log.prune(tmp_path, chunk.cursor)

        st = os.stat(path)
        assert st.st_size == written  # the same length: offsets stay valid
        assert st.st_blocks * 512 < 64 * 1024  # only the last, partly unread block is left on disk
        # The writer goes on at the end, and the reader finds only the new lines after its cursor.
        _write(fd, "s2", 3, size=7)
        later = egress_log.read(tmp_path, chunk.cursor)
        assert later.bytes_by_session == {"s2": 21} and later.lines == 3
        assert os.stat(path).st_size > written
    finally:
        os.close(fd)


def test_a_small_or_unread_log_is_left_whole(tmp_path):
    fd = egress_log.log_open(tmp_path)
    try:
        written = _write(fd, "s1", 40_000)
        path = egress_log.directory(tmp_path) / egress_log._files(tmp_path)[0]
        held = os.stat(path).st_blocks
        # Nothing read yet, and a cursor below the threshold: no block is freed.
        assert egress_log.punch(path, 0) == 0
        assert egress_log.punch(path, egress_log.PUNCH_MIN_BYTES - 1) == 0
        assert os.stat(path).st_blocks == held
        # Punched once, a second prune at the same cursor has nothing left to free.
        assert egress_log.punch(path, written) > 0
        assert egress_log.punch(path, written) == 0
    finally:
        os.close(fd)


def test_older_files_are_removed_once_the_cursor_is_past_them(tmp_path):
    first = egress_log.log_open(tmp_path)
    _write(first, "s1", 2)
    os.close(first)  # that gateway stopped
    second = egress_log.log_open(tmp_path)
    try:
        _write(second, "s2", 1)
        chunk = egress_log.read(tmp_path, egress_log.Cursor())
        assert chunk.bytes_by_session == {"s1": 200, "s2": 100}
        assert egress_log.prune(tmp_path, chunk.cursor) == 1
        assert egress_log._files(tmp_path) == [chunk.cursor.file]
    finally:
        os.close(second)
