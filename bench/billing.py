"""Billing benchmark on PostgreSQL: the outbox delivering billing events to a provider that answers in 5 ms.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/hearth_bench_billing .venv/bin/python bench/billing.py \
        [--events 2000] [--drainers 1] [--latency-ms 5]

Uses its own database (`hearth_bench_billing` by default; created and migrated if missing). The provider is the
Stripe-shaped server of the outbox tests (real HTTP on loopback, idempotency keys, 5 ms per answer); the
deliveries go through the real Stripe provider (the stripe SDK) and `billing.services.deliveries_drain`, run by
`--drainers` concurrent drainer processes (as several Celery workers would: `SELECT … FOR UPDATE SKIP LOCKED`
shares the work); the provider runs in a process of its own. Prints one JSON line and a human summary.
Targets (issue 10): outbox >= 200 events/s; reconciliation of a month for 1,000 tenants x 5 meters <= 30 s (the
reconciliation half is not built yet: see `bench_reconciliation`).
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hearth_bench_billing?conn_max_age=600")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
os.environ.setdefault("HEARTH_INSTANCE", "hearth-bench")

TARGETS = {"outbox_events_per_s": 200, "reconcile_seconds": 30.0}


def ensure_database():
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def bench_tenant():
    from billing.models import BillingAccount, BillingEvent
    from tenants.models import Plan, Tenant

    tenant, _ = Tenant.objects.get_or_create(
        slug="bench-billing", defaults={"name": "Bench billing", "plan": Plan.objects.get(slug="pro"),
                                        "synthetic": True})
    BillingAccount.objects.update_or_create(tenant=tenant, defaults={"providers": ["stripe"],
                                                                     "stripe_customer_id": "cus_bench"})
    BillingEvent.objects.filter(tenant=tenant).delete()  # deliveries go with them: every run starts empty
    return tenant


def record_events(tenant, count):
    from django.db import transaction

    from billing.services import billing_event_record
    from metering import periods

    month, _ = periods.month_bounds()
    stamp = int(time.time())
    with transaction.atomic():
        for n in range(count):
            billing_event_record(tenant=tenant, kind="usage", period_start=month, quantity=60, amount_cents=1,
                                 identifier=f"bench:{stamp}:{n}")


def _serve(delay, port_pipe, control):
    """The provider, in a process of its own as a real one would be; on "stop" it reports what it recorded."""
    from tests.billing.provider_server import ProviderServer

    provider = ProviderServer(delay=delay).start()
    port_pipe.send(provider.port)
    control.recv()
    provider.stop()
    control.send({"requests": len(provider.requests), "created": provider.created})


def _drain(provider_url, batch_size, errors):
    """One drainer process (a Celery worker's share): drain until nothing is due."""
    from django.conf import settings
    from django.db import connection

    from billing.services import deliveries_drain

    settings.STRIPE_API_BASE = provider_url
    try:
        while deliveries_drain(batch_size=batch_size):
            pass
    except Exception as exc:  # reported in the results
        errors.put(repr(exc))
    finally:
        connection.close()


def bench_outbox(*, events, drainers, latency_ms, batch_size):
    import multiprocessing

    from django.db import connections
    from django.db.models import Count

    from billing.models import Delivery

    fork = multiprocessing.get_context("fork")
    port_recv, port_send = fork.Pipe(duplex=False)
    control, control_child = fork.Pipe()
    server = fork.Process(target=_serve, args=(latency_ms / 1000, port_send, control_child), daemon=True)
    server.start()
    provider_url = f"http://127.0.0.1:{port_recv.recv()}"
    tenant = bench_tenant()
    record_events(tenant, events)
    connections.close_all()  # never share a connection with the forked drainers
    errors = fork.Queue()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    processes = [fork.Process(target=_drain, args=(provider_url, batch_size, errors)) for _ in range(drainers)]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    elapsed = time.perf_counter() - started
    load_after = os.getloadavg()[0]
    control.send("stop")
    seen = control.recv()
    server.join(10)
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    states = dict(Delivery.objects.filter(event__tenant=tenant).values_list("state").annotate(n=Count("pk")))
    delivered = states.get("delivered", 0)
    created = seen["created"]
    return {
        "events": events, "drainers": drainers, "batch_size": batch_size, "provider_latency_ms": latency_ms,
        "seconds": round(elapsed, 3), "events_per_s": round(delivered / elapsed, 1),
        "delivered": delivered, "states": states, "errors": failures,
        "provider_requests": seen["requests"], "provider_events": len(created),
        "exactly_once": len(created) == len(set(created)) == events,
        "load_average": round(max(load_before, load_after), 2),
    }


def bench_reconciliation():
    """The reconciliation half (a month of synthetic usage for 1,000 tenants x 5 meters, reconciled in <= 30 s)
    comes with reconciliation itself (issue 10, item 4); until then it reports that it did not run."""
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--drainers", type=int, default=1, help="concurrent drains (Celery workers)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="the provider's answer time")
    parser.add_argument("--batch-size", type=int, default=100)
    args = parser.parse_args()

    ensure_database()
    import django

    django.setup()
    results = {"bench": "billing", "database": os.environ["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0],
               "cpus": os.cpu_count()}
    results["outbox"] = bench_outbox(events=args.events, drainers=args.drainers, latency_ms=args.latency_ms,
                                 batch_size=args.batch_size)
    results["reconciliation"] = bench_reconciliation()
    results["targets"] = TARGETS
    outbox = results["outbox"]
    verdicts = {"outbox_events_per_s": outbox["events_per_s"] >= TARGETS["outbox_events_per_s"]
                and outbox["exactly_once"] and not outbox["errors"]}
    results["verdicts"] = {key: "met" if ok else "MISSED" for key, ok in verdicts.items()}
    results["verdicts"]["reconcile_seconds"] = "not run (reconciliation not built yet)"
    print(json.dumps(results))
    print(f"machine: {os.cpu_count()} CPUs shared with other work; 1-min load average: {outbox['load_average']}")
    print(f"outbox: {outbox['delivered']:,} of {outbox['events']:,} billing events delivered in {outbox['seconds']} s "
          f"by {outbox['drainers']} drainers to a provider answering in {outbox['provider_latency_ms']} ms: "
          f"{outbox['events_per_s']:,} events/s; "
          f"each exactly once at the provider: {outbox['exactly_once']}; errors: {len(outbox['errors'])} — target "
          f"{TARGETS['outbox_events_per_s']}/s: {results['verdicts']['outbox_events_per_s']}")
    print(f"reconciliation: {results['verdicts']['reconcile_seconds']}")


if __name__ == "__main__":
    main()
