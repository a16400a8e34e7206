"""Following each node's engine: its container events (die, oom, destroy) end a dead container's session at once, and
a ping every WORKSPACES_NODE_HEARTBEAT seconds is the node's heartbeat. One follower per node across every process
(a PostgreSQL advisory lock); `manage.py engine_events` runs them (the Procfile's `events`)."""
import logging
import threading

from django.conf import settings
from django.db import DatabaseError, connection

from config import db
from workspaces import reconciler, routing
from workspaces import runtime as rt
from workspaces.models import Container, Node, Workspace
from workspaces.pool import health

log = logging.getLogger(__name__)

State = Container.State

_FOLLOWER_LOCK = 0x4847  # advisory lock class of the followers: (class, node pk)
# Held already by this connection, or taken now without waiting (CASE: the try runs only when not held, so the
# lock's count never grows).
_LEAD_SQL = ("SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted "
             "AND pid = pg_backend_pid() AND classid = %s AND objid = %s AND objsubid = 2) "
             "THEN true ELSE pg_try_advisory_lock(%s, %s) END")


def container_event_handle(*, node, event):
    """A die, oom or destroy of one of this installation's containers on `node`. A WARM or CLAIMED container that no
    longer runs is LOST: its session ends (metered, route deleted) and its remains go. Returns True if it was."""
    pk = event.labels.get("hearth.container", "")
    if event.labels.get("hearth.node", node.name) != node.name or not pk.isdigit():
        return False
    row = Container.objects.filter(pk=int(pk), node=node, state__in=(State.WARM, State.CLAIMED)).select_related(
        "node", "template").first()
    # Released by Hearth (its own remove makes these events), still provisioning (it sees the failure), lost already.
    if row is None or (row.engine_id and row.engine_id != event.engine_id):
        return False
    if event.action == "oom":
        # The kernel killed a process inside; the container lives on unless that was its init (then `die` follows).
        found = rt.runtime_for(node).inspect(row.engine_id)
        if found is not None and found.status == "running":
            log.info("%s on %s: a process was killed for memory; the container still runs", row, node.name)
            return False
    if row.state == State.CLAIMED:
        # The route first: its address is free on the engine now and may be handed to the next container, which
        # would then receive this session's cookie. (A route sync in between puts it back; the end deletes it again.)
        for workspace in Workspace.objects.filter(sessions__container=row, sessions__ended_at__isnull=True).only(
                "host_key"):
            routing.route_delete_for(workspace)
    return reconciler.container_lost(row, reason=f"{event.action} on the engine")


class NodeFollower:
    """One node's event stream and heartbeat, in two threads with a database connection each.

    The stream thread holds the node's follower lock (a second follower of the node, in any process, waits as a
    standby and takes over when the first one's connection goes). On each (re)connect it asks for events since the
    last one it handled, marks the node answered, then runs the reconciler's pass for the node (a restarted engine
    forgets its events), then handles events as they come. The heartbeat thread pings the engine: an answer keeps
    the node healthy, a failure counts against it and cuts the stream (whose connection may otherwise hang).
    """

    def __init__(self, node_id, *, heartbeat=None, reconcile_on_connect=True):
        self.node_id = node_id
        self.heartbeat = float(heartbeat or settings.WORKSPACES_NODE_HEARTBEAT)
        self.reconcile_on_connect = reconcile_on_connect
        self.cursor_ns = None  # the engine's time of the newest event handled
        self.connects = 0
        self.handled = 0
        self.connected = threading.Event()  # a stream is open (and the pass after connecting is done)
        self._leading = threading.Event()
        self._stop = threading.Event()
        self._stream = None
        self._runtime = None
        self._threads = []

    def start(self):
        for target in (self._follow, self._beat):
            thread = threading.Thread(target=self._with_own_db, args=(target,), daemon=True,
                                      name=f"hearth-node{self.node_id}-{target.__name__.strip('_')}")
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, timeout=15):
        self._stop.set()
        self._close_stream()
        for thread in self._threads:
            thread.join(timeout)

    def alive(self):
        return bool(self._threads) and all(thread.is_alive() for thread in self._threads)

    def _with_own_db(self, target):
        try:
            target()
        finally:
            connection.close()  # this thread's connection, and the follower lock with it

    def _close_stream(self):
        stream = self._stream
        if stream is not None:
            stream.close()

    def _runtime_for(self, node):
        # A client of its own, with the heartbeat as its time-out: a hung engine is a failed call within a beat.
        if self._runtime is None or self._runtime.url != node.engine_url:
            self._runtime = rt.DockerRuntime(node.engine_url, node_name=node.name,
                                             timeout=max(1.0, min(self.heartbeat, settings.HEARTH_DOCKER_TIMEOUT)))
        return self._runtime

    def _lead(self):
        return bool(db.fetchone(_LEAD_SQL, [_FOLLOWER_LOCK, self.node_id, _FOLLOWER_LOCK, self.node_id])[0])

    def _follow(self):
        backoff = 0.1
        while not self._stop.is_set():
            node = None
            try:
                node = Node.objects.filter(pk=self.node_id, enabled=True).first()
                if node is None or not self._lead():
                    self._leading.clear()
                    self._stop.wait(self.heartbeat)
                    continue
                self._leading.set()
                self._stream_follow(node)
                backoff = 0.1
                if self._stop.is_set():
                    break
                health.node_call_failed(node, "event stream", "the engine closed it")
            except rt.RuntimeUnavailable as exc:
                health.node_call_failed(node, "event stream", exc)
            except DatabaseError as exc:  # the database went away: a new connection (and the lock again) next time
                log.warning("engine events of node %s: database error: %s", self.node_id, exc)
                self._leading.clear()
                connection.close()
            except Exception:
                log.exception("engine events of node %s failed; reconnecting", self.node_id)
            finally:
                self.connected.clear()
                self._stream = None
            self._stop.wait(backoff)
            backoff = min(backoff * 2, self.heartbeat)

    def _stream_follow(self, node):
        if self.cursor_ns is None:
            self.cursor_ns = node.events_cursor_ns
        self._stream = self._runtime_for(node).events(instance=settings.HEARTH_INSTANCE, since_ns=self.cursor_ns)
        if self._stop.is_set():
            return
        self.connects += 1
        health.node_answered(node, events_cursor_ns=self.cursor_ns)
        if self.reconcile_on_connect:
            reconciler.node_reconcile(node)
        self.connected.set()
        for event in self._stream:
            self.handled += container_event_handle(node=node, event=event)
            self.cursor_ns = max(self.cursor_ns or 0, event.time_ns)
            if self._stop.is_set():
                return

    def _beat(self):
        while not self._stop.wait(self.heartbeat):
            if not self._leading.is_set():
                continue
            try:
                node = Node.objects.filter(pk=self.node_id).first()
                if node is None:
                    continue
                try:
                    self._runtime_for(node).ping()
                except rt.RuntimeUnavailable as exc:
                    health.node_call_failed(node, "heartbeat", exc)
                    self._close_stream()
                    continue
                health.node_answered(node, events_cursor_ns=self.cursor_ns)
            except DatabaseError as exc:
                log.warning("heartbeat of node %s: database error: %s", self.node_id, exc)
                connection.close()


class Followers:
    """A follower for every enabled node, started and stopped as nodes come and go (looked at every heartbeat)."""

    def __init__(self, *, heartbeat=None):
        self.heartbeat = float(heartbeat or settings.WORKSPACES_NODE_HEARTBEAT)
        self.followers = {}

    def sync(self):
        wanted = set(Node.objects.filter(enabled=True).values_list("pk", flat=True))
        for node_id in list(self.followers):
            follower = self.followers[node_id]
            if node_id not in wanted or not follower.alive():
                follower.stop()
                del self.followers[node_id]
        for node_id in wanted - set(self.followers):
            self.followers[node_id] = NodeFollower(node_id, heartbeat=self.heartbeat).start()

    def run(self, stop):
        """Until `stop` (a threading.Event) is set."""
        try:
            while not stop.is_set():
                try:
                    self.sync()
                except DatabaseError as exc:
                    log.warning("engine events: cannot read the nodes: %s", exc)
                    connection.close()
                stop.wait(self.heartbeat)
        finally:
            for follower in self.followers.values():
                follower.stop()
