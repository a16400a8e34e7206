"""Bursts: provisioning slots bound the starts per node, pool fills start side by side, cold opens wait for a slot
or for a container that warms up meanwhile (committed transactions, a connection per thread, real Docker)."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connection

from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, services
from workspaces.models import Container, Session
from workspaces.pool import placement

pytestmark = [pytest.mark.docker]
State = Container.State


def _in_thread(fn, *args, **kwargs):
    """Run fn in a thread of its own (its own database connection, closed after); returns the future."""

    def run():
        try:
            return fn(*args, **kwargs)
        finally:
            connection.close()

    executor = ThreadPoolExecutor(1)
    future = executor.submit(run)
    executor.shutdown(wait=False)
    return future


class SlotHolder:
    """Holds provisioning slots of a node, each from a thread with its own connection, as other processes would.

    (A PostgreSQL session may take an advisory lock it holds again: slots exclude other connections, not its own.)
    """

    def __init__(self, node):
        self.node, self.slots = node, []
        self._release = threading.Event()
        self._futures = []

    def hold(self, count):
        for _ in range(count):
            took = threading.Event()

            def run(took=took):
                slot = pool.provision_slot_try(self.node)
                took.set()
                if slot is None:
                    return
                self.slots.append(slot)
                self._release.wait(60)
                pool.provision_slot_release(self.node, slot)

            self._futures.append(_in_thread(run))
            assert took.wait(10)
        return self.slots

    def release(self):
        self._release.set()
        for future in self._futures:
            future.result(timeout=10)


def _slot_locks_held():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted "
                       "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                       [placement._SLOT_LOCK_CLASS])
        return cursor.fetchone()[0]


def test_a_node_has_only_its_provisioning_slots_across_connections(live_db, node, settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 2
    holder = SlotHolder(node)
    assert sorted(holder.hold(5)) == [0, 1]  # a third is refused: both slots are taken
    assert _slot_locks_held() == 2  # each try took one lock, not one per slot it looked at
    assert _in_thread(pool.provision_slot_try, node).result(10) is None
    started = time.monotonic()
    assert _in_thread(pool.provision_slot_wait, node, timeout=0.3).result(10) is None
    assert 0.25 < time.monotonic() - started < 5  # waited, then gave up
    holder.release()
    assert _slot_locks_held() == 0
    assert _in_thread(pool.provision_slot_try, node).result(10) in (0, 1)
    deadline = time.monotonic() + 5
    while _slot_locks_held() and time.monotonic() < deadline:  # the server ends the closed session a moment later
        time.sleep(0.05)
    assert _slot_locks_held() == 0  # the thread's connection closed without releasing: the server dropped its lock


def test_a_waiting_start_takes_a_slot_the_moment_another_connection_frees_it(live_db, node, settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 1
    holder = SlotHolder(node)
    holder.hold(1)

    def wait_for_slot():
        slot = pool.provision_slot_wait(node, timeout=10)
        got_at = time.monotonic()
        pool.provision_slot_release(node, slot)
        return slot, got_at

    waiting = _in_thread(wait_for_slot)
    time.sleep(0.5)
    assert not waiting.done()
    released_at = time.monotonic()
    holder.release()
    slot, got_at = waiting.result(10)
    assert slot == 0
    assert got_at - released_at < 0.2  # a release in this process wakes the waiter at once


def test_pool_fill_starts_containers_side_by_side_within_the_bound(live_db, node, tiny_template, settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 3
    tiny_template.warm_min = tiny_template.warm_max = 7
    tiny_template.save()
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(Container.objects.filter(state=State.PROVISIONING).count())
            time.sleep(0.01)

    watcher = _in_thread(watch)
    try:
        assert pool.pool_fill() == 7
    finally:
        stop.set()
        watcher.result(10)
    assert Container.objects.filter(state=State.WARM).count() == 7
    assert max(seen) <= 3  # never more starts at once than the node's slots
    assert max(seen) >= 2  # but more than one: the fill does not start them one after another
    assert _slot_locks_held() == 0
    assert pool.pool_fill() == 0  # at target


def test_pool_fill_waits_for_slots_held_elsewhere(live_db, node, tiny_template, settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 2
    tiny_template.warm_min = tiny_template.warm_max = 2
    tiny_template.save()
    holder = SlotHolder(node)
    holder.hold(2)
    filling = _in_thread(pool.pool_fill)
    time.sleep(0.8)
    assert Container.objects.count() == 0  # no slot: nothing reserved, nothing started
    holder.release()
    assert filling.result(60) == 2
    assert Container.objects.filter(state=State.WARM).count() == 2


def test_cold_open_takes_a_container_that_warms_up_while_it_waits(live_db, node, tiny_template, workspace, member,
                                                                  settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 1
    settings.WORKSPACES_POOL_POLL_INTERVAL = 0.2
    tiny_template.warm_min = tiny_template.warm_max = 0
    tiny_template.save()
    holder = SlotHolder(node)  # the refill worker: it has the node's only slot
    holder.hold(1)
    opening = _in_thread(services.workspace_open, workspace=workspace, user=member.user)
    time.sleep(0.5)
    assert not opening.done()  # the pool is empty and the only slot is busy: the open waits
    # The worker's start finishes (it holds the slot): a WARM container of the template appears.
    tiny_template.warm_min = tiny_template.warm_max = 1
    tiny_template.save()
    warm = pool.container_provision(template=tiny_template, node=node, for_warm=True, slot_held=True)
    assert warm.state == State.WARM
    opened = opening.result(30)
    holder.release()
    assert opened.session.container_id == warm.pk  # served by the refill, not by a start of its own
    assert opened.session.cold_start is True  # the user waited for a container: a cold start all the same
    assert Session.objects.get(pk=opened.session.pk).cold_start is True
    assert Container.objects.get(pk=warm.pk).state == State.CLAIMED
    assert Container.objects.count() == 1


def test_cold_open_gives_up_with_503_when_no_slot_or_container_comes(live_db, node, tiny_template, workspace, member,
                                                                     settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 1
    settings.WORKSPACES_COLD_START_WAIT = 1.0
    settings.WORKSPACES_POOL_POLL_INTERVAL = 0.2
    tiny_template.warm_min = tiny_template.warm_max = 0
    tiny_template.save()
    holder = SlotHolder(node)
    holder.hold(1)
    try:
        with pytest.raises(pool.PoolBusy) as raised:
            services.workspace_open(workspace=workspace, user=member.user)
    finally:
        holder.release()
    assert raised.value.status_code == 503 and raised.value.code == "pool_busy"
    assert Container.objects.count() == 0  # nothing reserved, nothing started
    assert Session.objects.count() == 0


def test_a_burst_against_a_small_pool_gives_everyone_a_container_of_their_own(live_db, node, tiny_template, tenant_e,
                                                                              make_workspace, settings):
    settings.WORKSPACES_PROVISION_CONCURRENCY = 3
    tiny_template.warm_min = tiny_template.warm_max = 2
    tiny_template.save()
    assert pool.pool_fill() == 2
    members = [MembershipFactory(tenant=tenant_e) for _ in range(10)]
    workspaces = [make_workspace(m, f"b{i}") for i, m in enumerate(members)]
    barrier = threading.Barrier(len(members))
    seen, stop = [], threading.Event()

    def watch():
        while not stop.is_set():
            seen.append(Container.objects.filter(state=State.PROVISIONING).count())
            time.sleep(0.01)

    def open_one(job):
        workspace, user = job
        barrier.wait()
        try:
            return services.workspace_open(workspace=workspace, user=user).session
        finally:
            connection.close()

    watcher = _in_thread(watch)
    try:
        with ThreadPoolExecutor(len(members)) as executor:
            sessions = list(executor.map(open_one, zip(workspaces, [m.user for m in members], strict=True)))
    finally:
        stop.set()
        watcher.result(10)
    assert len({s.container_id for s in sessions}) == 10  # never one container for two users
    assert sorted(s.cold_start for s in sessions) == [False] * 2 + [True] * 8
    assert Container.objects.filter(state=State.CLAIMED).count() == 10
    assert Container.objects.filter(state=State.PROVISIONING).count() == 0
    assert Container.objects.exclude(state=State.CLAIMED).count() <= 2  # no pile of spare containers either
    assert max(seen) <= 3
    assert _slot_locks_held() == 0
    for session in sessions:
        services.session_end(session=session, reason=Session.EndReason.CLOSED)
    assert Container.objects.filter(state__in=Container.ACTIVE_STATES).count() == 0


def _line_holder(template, release):
    line = pool.ColdOpenLine(template)
    assert line.enter(timeout=5)
    release.wait(30)
    line.leave()


def test_cold_opens_wait_in_line_first_come_first_served(live_db, tiny_template):
    release, order = threading.Event(), []
    head = _in_thread(_line_holder, tiny_template, release)
    time.sleep(0.3)

    def wait_in_line(name):
        line = pool.ColdOpenLine(tiny_template)
        if line.enter(timeout=10):
            order.append(name)
            line.leave()

    second = _in_thread(wait_in_line, "second")
    time.sleep(0.3)
    third = _in_thread(wait_in_line, "third")
    time.sleep(0.3)
    assert order == []  # both wait behind the head
    started = time.monotonic()
    assert not _in_thread(pool.ColdOpenLine(tiny_template).enter, timeout=0.3).result(10)  # gives up in time
    assert 0.25 < time.monotonic() - started < 5
    release.set()
    head.result(10), second.result(10), third.result(10)
    assert order == ["second", "third"]


def test_waiting_in_line_inside_a_transaction_leaves_its_lock_timeout_alone(tiny_template):
    release = threading.Event()
    holder = _in_thread(_line_holder, tiny_template, release)
    time.sleep(0.3)
    threading.Timer(0.3, release.set).start()
    assert connection.in_atomic_block  # the test's transaction: the wait runs in a savepoint
    line = pool.ColdOpenLine(tiny_template)
    assert line.enter(timeout=5)  # blocks on the lock until the holder leaves
    with connection.cursor() as cursor:
        cursor.execute("SHOW lock_timeout")
        assert cursor.fetchone()[0] == "0"  # later lock waits of the transaction are not cut short
    line.leave()
    holder.result(10)


def test_a_slot_release_in_an_aborted_transaction_still_frees_the_slot(live_db, node):
    """The unlock fails there (InFailedSqlTransaction) while the connection lives on: closing it drops the lock,
    or a persistent connection would keep the slot for as long as it lives."""
    from django.db import DatabaseError, transaction

    def run():
        slot = pool.provision_slot_try(node)
        assert slot is not None
        try:
            with transaction.atomic():
                try:
                    with connection.cursor() as cursor:
                        cursor.execute("SELECT 1 / 0")
                except DatabaseError:
                    pass  # the transaction is aborted now
                pool.provision_slot_release(node, slot)
        except DatabaseError:
            pass  # leaving the atomic block over a connection closed inside it
        return _in_thread(_slot_locks_held).result(timeout=10)  # seen from elsewhere while this thread lives on

    assert _in_thread(run).result(timeout=10) == 0
