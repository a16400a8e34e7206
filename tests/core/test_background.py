"""core.background: the per-process daemon thread behind the refill nudge, the Internet grant, the trace hand-over
and the demand counter."""
import os
import threading

from core.background import BackgroundQueue


def test_items_reach_the_handler_in_a_background_thread_and_a_burst_coalesces():
    seen, threads, entered, go = [], set(), threading.Event(), threading.Event()

    def handle(batch):
        entered.set()
        go.wait(5)
        threads.add(threading.current_thread().name)
        seen.append(list(batch))

    queue = BackgroundQueue("hearth-test-queue", handle)
    queue.put(1)
    assert entered.wait(5)  # the handler has [1] and waits for `go`
    assert not queue.wait_idle(0.05)
    for item in (2, 3, 4):
        queue.put(item)
    go.set()
    assert queue.wait_idle(5)
    assert seen[0] == [1] and sum(seen, []) == [1, 2, 3, 4] and len(seen) == 2  # 2-4 came in one batch
    assert threads == {"hearth-test-queue"}


def test_a_failing_handler_leaves_the_queue_working():
    seen = []

    def handle(batch):
        seen.extend(batch)
        if batch == ["boom"]:
            raise RuntimeError("boom")

    queue = BackgroundQueue("hearth-test-queue", handle)
    queue.put("boom")
    assert queue.wait_idle(5)
    queue.put("next")
    assert queue.wait_idle(5)
    assert seen == ["boom", "next"]


def test_a_forked_child_starts_its_own_thread_with_an_empty_queue():
    read, write = os.pipe()

    def handle(batch):
        os.write(write, f"{os.getpid()}:{','.join(batch)}\n".encode())

    queue = BackgroundQueue("hearth-test-queue", handle)
    queue.put("parent")
    assert queue.wait_idle(5)
    pid = os.fork()
    if pid == 0:  # the child: its own thread, none of the parent's items
        try:
            queue.put("child")
            queue.wait_idle(5)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    os.close(write)
    with os.fdopen(read) as lines:
        assert lines.read().splitlines() == [f"{os.getpid()}:parent", f"{pid}:child"]


def test_take_hands_the_queued_items_to_the_caller_and_the_thread_gets_none_of_them():
    seen = []
    queue = BackgroundQueue("hearth-test-queue", seen.append, delay=0.3)  # the thread waits before it takes
    queue.put("a")
    queue.put("b")
    assert queue.take() == ["a", "b"]
    assert queue.wait_idle(5)
    assert seen == []  # no empty batch either
    queue.put("c")
    assert queue.wait_idle(5) and seen == [["c"]]
