"""Crash test: SIGKILL the web server and the Celery worker and restart Redis during ingestion; totals stay exact.

A real gunicorn (config.wsgi) and a real Celery worker run as subprocesses against the test database. A client
sends batches with duplicates and resends every batch it did not get an answer for, as a real client would.
Roll-ups are written in the events' transaction, so no worker sits between an event and its roll-up; the worker
runs the threshold scan and the outbox drain, which must still emit each notice exactly once.
"""
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import httpx
import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from metering.models import UsageEvent, UsageNotice, UsageRollup
from metering.tokens import service_token_create
from tenants.models import OutboxEvent
from tests.metering.conftest import tenant_on

API_METER = "ai_builder_tokens"

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv running the tests, wherever the checkout is


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(redis_url):
    db = connection.settings_dict
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}?conn_max_age=60",
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": redis_url,
        "LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(ROOT),
    }


class Redis:
    """A Redis server of the test's own (on a free port), so that restarting it never touches the shared one."""

    def __init__(self, port):
        self.port, self.proc = port, None
        self.url = f"redis://127.0.0.1:{port}/0"

    def start(self):
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no"],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for _ in range(100):
            ping = subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), "ping"], capture_output=True)
            if ping.returncode == 0 and b"PONG" in ping.stdout:
                return
            time.sleep(0.05)
        raise RuntimeError("the test's Redis did not start")

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def restart(self):
        self.kill()
        self.start()


class Web:
    def __init__(self, port, env):
        self.port, self.env, self.proc = port, env, None

    def start(self):
        self.proc = subprocess.Popen(
            [str(BIN / "gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{self.port}",
             "--workers", "2", "--log-level", "warning", "--graceful-timeout", "1"],
            cwd=ROOT, env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=2).status_code < 500:
                    return True
            except httpx.HTTPError:
                time.sleep(0.1)
        return False

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


class Worker:
    def __init__(self, env):
        self.env, self.proc = env, None

    def start(self):
        self.proc = subprocess.Popen(
            [str(BIN / "celery"), "-A", "config", "worker", "-P", "solo", "--without-heartbeat",
             "--without-gossip", "--without-mingle", "-l", "WARNING"],
            cwd=ROOT, env=self.env, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


@pytest.fixture
def own_redis():
    redis = Redis(free_port())
    redis.start()
    yield redis
    redis.kill()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.django_db(transaction=True)
def test_sigkill_web_and_worker_and_redis_restart_lose_nothing_and_count_nothing_twice(own_redis):
    import celery

    rng = random.Random(5)
    tenants = [tenant_on("starter"), tenant_on("free"), tenant_on("pro")]
    _, token = service_token_create(name="crash test", meters=["ai_builder_tokens"])
    now = timezone.now()
    # Workspace time is Hearth's own meter (no service token writes it): recorded here so the worker's threshold
    # scan has notices to emit while it is killed.
    from metering.services import usage_record

    for tenant in tenants:
        usage_record(tenant=tenant, meter="workspace_seconds", quantity=10 * 3600,
                     timestamp=now - timezone.timedelta(minutes=5))
    # 160 batches of 250; each repeats 10 % of the previous batch's events (a client's overlap on reconnect).
    distinct = {}
    batches, previous = [], []
    for b in range(160):
        fresh = []
        for i in range(225):
            tenant = tenants[rng.randrange(3)]
            event = {"id": f"crash-{b}-{i}", "tenant": tenant.slug, "meter": "ai_builder_tokens",
                     "quantity": rng.randint(1, 20), "timestamp": (now - timezone.timedelta(seconds=i)).isoformat(),
                     "subject": {"session": b}}
            fresh.append(event)
            distinct[event["id"]] = event
        batch = fresh + previous[:25]
        rng.shuffle(batch)
        batches.append(batch)
        previous = fresh

    redis = own_redis
    env = subprocess_env(redis.url)
    web, worker = Web(free_port(), env), Worker(env)
    web.start()
    worker.start()
    assert web.wait_ready(), "gunicorn did not start"
    broker = celery.Celery(broker=redis.url, set_as_current=False)  # the tests keep their own app for .delay()
    url = f"http://127.0.0.1:{web.port}/api/v1/usage/events"
    stats = defaultdict(int)
    done, stop, lock = threading.Event(), threading.Event(), threading.Lock()

    def send(http, batch):
        while not stop.is_set():  # resend until acknowledged: the server died before or after committing
            try:
                response = http.post(url, json={"events": batch})
            except httpx.HTTPError:
                stats["unacknowledged"] += 1
                time.sleep(0.05)
                continue
            if response.status_code != 200:
                stats[f"http_{response.status_code}"] += 1
                time.sleep(0.05)
                continue
            body = response.json()
            assert body["rejected"] == []
            stats["acknowledged"] += 1
            return body
        return {"accepted": 0, "duplicates": 0}

    finished = []

    def client(order):
        with httpx.Client(timeout=10, headers={"Authorization": f"Bearer {token}"}) as http:
            for batch in order:
                body = send(http, batch)
                with lock:
                    stats["accepted"] += body["accepted"]
                    stats["duplicates"] += body["duplicates"]
                time.sleep(0.01)
            # Until the chaos has had its rounds, replay old batches: all must come back as duplicates.
            while stats["web_killed"] < 5 and not stop.is_set():
                body = send(http, random.choice(batches))
                stats["replayed_accepted"] += body["accepted"]
        with lock:
            finished.append(order)
            if len(finished) == 2:
                done.set()

    def chaos():
        rounds = 0
        while not done.is_set() and not stop.is_set():
            web.wait_ready()
            time.sleep(rng.uniform(0.2, 0.7))  # then kill it while it serves batches
            if done.is_set():
                break
            web.kill()
            stats["web_killed"] += 1
            web.start()
            rounds += 1
            if rounds % 2 == 0:
                worker.kill()
                stats["worker_killed"] += 1
                worker.start()
            if rounds == 3:
                redis.restart()
                stats["redis_restarted"] += 1
            try:
                for _ in range(3):
                    broker.send_task("metering.tasks.usage_thresholds_scan")
                    broker.send_task("tenants.tasks.outbox_drain")
            except Exception:  # the broker is down this very moment: the next round sends again
                stats["enqueue_failed"] += 1

    # Two clients at once, the second sending the same batches in the opposite order: concurrent duplicates.
    threads = [threading.Thread(target=chaos, daemon=True), threading.Thread(target=client, args=(batches,)),
               threading.Thread(target=client, args=(batches[::-1],), daemon=True)]
    try:
        for thread in threads:
            thread.start()
        threads[1].join(timeout=500)
        threads[2].join(timeout=60)
        stop.set()
        threads[0].join(timeout=60)
        assert done.is_set(), f"the client did not finish: {dict(stats)}"
        # Let the worker finish its queue, then kill it in the middle of whatever it does.
        broker.send_task("metering.tasks.usage_thresholds_scan")
        time.sleep(2)
    finally:
        stop.set()  # the chaos thread starts no new process after this
        threads[0].join(timeout=90)
        web.kill()
        worker.kill()
        broker.close()
    print(json.dumps(dict(stats)))
    assert stats["web_killed"] >= 5 and stats["redis_restarted"] == 1 and stats["worker_killed"] >= 1, dict(stats)

    # None lost, none counted twice: events, day and month roll-ups all equal the distinct events sent.
    assert UsageEvent.objects.filter(meter__slug=API_METER).count() == len(distinct)
    # A batch committed just before a kill comes back as duplicates when resent; never more than once.
    assert stats["accepted"] <= len(distinct)
    assert stats["accepted"] + stats["duplicates"] == 2 * sum(len(batch) for batch in batches)
    assert stats["replayed_accepted"] == 0
    for tenant in tenants:
        expected = sum(e["quantity"] for e in distinct.values() if e["tenant"] == tenant.slug)
        rollups = UsageRollup.objects.filter(tenant=tenant, meter__slug=API_METER)
        stored = UsageEvent.objects.filter(tenant=tenant, meter__slug=API_METER).aggregate(s=Sum("quantity"))["s"]
        month = rollups.filter(period="month").aggregate(s=Sum("quantity"))["s"]
        days = rollups.filter(period="day").aggregate(s=Sum("quantity"))["s"]
        assert stored == month == days == expected, (tenant.slug, stored, month, days, expected)
        counted = rollups.filter(period="month").aggregate(s=Sum("event_count"))["s"]
        assert counted == sum(1 for e in distinct.values() if e["tenant"] == tenant.slug)

    # The worker's side: whatever it was doing when killed, each notice exists once with exactly one event.
    from metering.tasks import usage_thresholds_scan

    usage_thresholds_scan()
    notices = list(UsageNotice.objects.values_list("tenant_id", "meter_id", "period", "period_start", "kind"))
    assert len(notices) == len(set(notices)) and notices
    assert OutboxEvent.objects.filter(type__startswith="usage.").count() == len(notices)
