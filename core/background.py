"""One daemon thread per process that handles, in batches, the work a request hands it so that the request need not
wait for it (the pool's refill nudge, the Internet grant after an open, the open's traceparent for the gateway, the
demand counter's opens)."""
import logging
import os
import threading
import time
import weakref

log = logging.getLogger(__name__)
_queues = weakref.WeakSet()


class BackgroundQueue:
    """Items `put` from any thread reach `handle(batch)` in a daemon thread of this process: everything put since
    its last call, after waiting `delay` seconds past the first (to coalesce a burst). The thread starts at the first
    `put`, and again in a forked child (which starts with an empty queue: the parent's items are the parent's) or
    if it died. Best effort: what is queued when the process dies is lost, so each user has a way to recover it
    (the beat's refill tick, the reconciler's grant)."""

    def __init__(self, name, handle, *, delay=0.0):
        self.name, self._handle, self.delay = name, handle, delay
        self._reset()
        _queues.add(self)

    def _reset(self):
        self._cond = threading.Condition()
        self._items, self._busy, self._thread = [], False, None

    def put(self, item):
        with self._cond:
            self._items.append(item)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def take(self):
        """What is queued and not yet handed to the thread, for a caller that handles it now (a test's flush)."""
        with self._cond:
            items, self._items = self._items, []
            self._cond.notify_all()
        return items

    def wait_idle(self, timeout):
        """True once nothing is queued or being handled (tests, a graceful stop); False after `timeout` seconds."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._items and not self._busy, timeout=timeout)

    def _run(self):
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._items)
                self._busy = True
            if self.delay:
                time.sleep(self.delay)
            with self._cond:
                batch, self._items = self._items, []
            try:
                if batch:  # a `take` may have emptied the queue meanwhile
                    self._handle(batch)
            except Exception:  # the next batch still comes
                log.exception("%s: handling %d items failed", self.name, len(batch))
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()


def _forked():
    for queue in list(_queues):
        queue._reset()  # the parent's lock may have been held by its thread, which the child does not have


os.register_at_fork(after_in_child=_forked)
