"""Crash: a Celery worker SIGKILLed mid-delivery (the provider has the request, the row is not marked yet).

A real Celery worker runs against the test database and delivers to the Stripe-shaped provider over HTTP. The
provider records the 11th meter event and holds its answer; the test kills the worker right then (the other
calls of that wave may have been answered: their rows are not marked either). The batch's
transaction dies with it, so every delivery is pending again; a new worker repeats them with the same
idempotency keys, and the provider ends up with each event exactly once.
"""
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import celery
import pytest
from django.db import connection, transaction

from billing.models import BillingEvent, Delivery
from billing.outbox import billing_event_record
from tests.billing.outbox_support import tenant_billed_by, utc
from tests.billing.provider_server import ProviderServer
from tests.conftest import seed_data_ensure

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


class Worker:
    def __init__(self, env):
        self.env, self.proc = env, None

    def start(self):
        self.proc = subprocess.Popen(
            [str(BIN / "celery"), "-A", "config", "worker", "-P", "solo", "--without-heartbeat", "--without-gossip",
             "--without-mingle", "-l", "WARNING"],
            cwd=ROOT, env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )

    def kill(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def wait_for(condition, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.django_db(transaction=True)
def test_worker_killed_mid_delivery_duplicates_nothing_and_loses_nothing(redis_url):
    seed_data_ensure()  # plans: an earlier transactional test's flush may have taken them
    provider = ProviderServer().start()
    instance = f"billing-crash-{uuid.uuid4().hex[:8]}"  # a queue of its own in the shared Redis
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.billing.worker_settings",
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "REDIS_URL": redis_url, "CELERY_BROKER_URL": redis_url, "HEARTH_INSTANCE": instance,
        "HEARTH_TEST_PROVIDER_URL": provider.url, "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT),
    }
    broker = celery.Celery(broker=redis_url, set_as_current=False)
    broker.conf.broker_transport_options = {"global_keyprefix": f"{instance}:"}
    tenant = tenant_billed_by("stripe")
    with transaction.atomic():
        for n in range(25):
            billing_event_record(tenant=tenant, kind="usage", period_start=utc(2026, 11, 1), quantity=60 + n,
                                 amount_cents=1, identifier=f"usage:t{tenant.pk}:crash:{n}")
    identifiers = sorted(BillingEvent.objects.values_list("identifier", flat=True))
    provider.hold_after = 10
    worker = Worker(env)
    try:
        worker.start()
        broker.send_task("billing.tasks.deliveries_drain")
        assert provider.held.wait(120), "the worker never reached the provider"
        worker.kill()  # the provider has the 11th event; no delivery row is marked
        provider.release.set()
        deliveries = Delivery.objects.filter(event__tenant=tenant)
        assert set(deliveries.values_list("state", "attempts")) == {("pending", 0)}
        before_crash = list(provider.created)  # the 11th, and what the other threads of its wave had sent
        assert len(before_crash) >= 11

        worker.start()
        broker.send_task("billing.tasks.deliveries_drain")
        assert wait_for(lambda: not deliveries.exclude(state="delivered").exists(), 120), \
            list(deliveries.values_list("state", "last_error"))
    finally:
        worker.kill()
        provider.stop()
    assert sorted(provider.created) == identifiers  # each event exactly once at the provider
    for identifier in before_crash:  # sent again after the restart, under the same key, answered from it
        keys = [key for key, seen in provider.requests if seen == identifier]
        assert len(keys) == 2 and keys[0] == keys[1]
