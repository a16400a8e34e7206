"""Billing benchmark on PostgreSQL: the outbox delivering billing events to a provider that answers in 5 ms, and the
reconciliation of a month of 1,000 tenants.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/hearth_bench_billing .venv/bin/python bench/billing.py \
        [--events 2000] [--drainers 1] [--latency-ms 5] [--tenants 1000] [--only outbox|reconciliation]

Uses its own database (`hearth_bench_billing` by default; created and migrated if missing). The provider is the
Stripe-shaped server of the outbox tests (real HTTP on loopback, idempotency keys, 5 ms per answer); the
deliveries go through the real Stripe provider (the stripe SDK) and `billing.services.deliveries_drain`, run by
`--drainers` concurrent drainer processes (as several Celery workers would: `SELECT … FOR UPDATE SKIP LOCKED`
shares the work); the provider runs in a process of its own. Prints one JSON line and a human summary.
Targets (issue 10): outbox >= 200 events/s; reconciliation of a month for 1,000 tenants x 5 meters <= 30 s
(`bench_reconciliation`: the month's roll-ups, usage events, deliveries and invoice lines are written set-based
for January 2020, with planted gaps, then `billing.reconciliation.reconciliation_run` reconciles it).
`--only outbox|reconciliation` runs one half; `--tenants` sizes the reconciliation.
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


RECON_PERIOD = (2020, 1)  # a month of its own: the bench's synthetic usage never mixes with real months
RECON_METERS = ("workspace_seconds", "storage_bytes", "egress_bytes", "seats", "bench_api_calls")
RECON_REPORTS = 30  # usage events per tenant in the month (a report a day that found more overage)


def _recon_tenants(count):
    """`count` tenants on Pro, billed by Hearth's invoices (not synthetic: reconciliation bills no synthetic
    usage), made once and reused; their month of usage and billing is rewritten on every run."""
    from billing.models import BillingAccount
    from metering.models import Meter
    from tenants.models import Plan, Tenant

    pro = Plan.objects.get(slug="pro")
    Meter.objects.get_or_create(slug="bench_api_calls", defaults={"name": "Bench API calls", "unit": "calls",
                                                                  "declared_by": "tenant"})
    Tenant.objects.bulk_create([Tenant(slug=f"bench-recon-{n:05d}", name=f"Bench recon {n}", plan=pro)
                                for n in range(count)], ignore_conflicts=True)
    tenants = list(Tenant.objects.filter(slug__startswith="bench-recon-").order_by("slug")[:count])
    BillingAccount.objects.bulk_create([BillingAccount(tenant=t, providers=["invoice"]) for t in tenants],
                                       ignore_conflicts=True)
    return [t.pk for t in tenants], pro


# The month, set-based: roll-ups (a month row and 30 day rows per meter), RECON_REPORTS usage events per tenant
# that add up to its overage, each delivered to the invoice provider and on its draft invoice. Then the planted
# gaps: tenants n % 100 == 1 have their last delivery dead (used but not reported), == 2 have its invoice line
# lost (reported but not billed), == 3 have one event counted twice (billed but not metered).
_RECON_SETUP = """
CREATE TEMP TABLE bench_t ON COMMIT DROP AS
SELECT t.id AS tenant_id, row_number() OVER (ORDER BY t.slug) - 1 AS n,
       3600 * (1 + (row_number() OVER (ORDER BY t.slug) - 1) %% 10) + row_number() OVER (ORDER BY t.slug) AS overage
  FROM tenants_tenant t WHERE t.id = ANY(%(ids)s);

DELETE FROM billing_invoiceline l USING billing_invoice i WHERE l.invoice_id = i.id AND i.tenant_id = ANY(%(ids)s);
DELETE FROM billing_invoice WHERE tenant_id = ANY(%(ids)s);
DELETE FROM billing_delivery d USING billing_billingevent e WHERE d.event_id = e.id AND e.tenant_id = ANY(%(ids)s);
DELETE FROM billing_billingevent WHERE tenant_id = ANY(%(ids)s);
DELETE FROM metering_usagerollup WHERE tenant_id = ANY(%(ids)s);
DELETE FROM billing_reconciliationgap WHERE period_start = %(month)s;

INSERT INTO metering_usagerollup (tenant_id, meter_id, period, period_start, aggregation, quantity, event_count,
                                  last_quantity, last_at, updated_at)
SELECT b.tenant_id, m.id, 'month', %(month)s, m.aggregation,
       CASE WHEN m.slug = 'workspace_seconds' THEN %(allowance)s + b.overage ELSE 1000 + b.n END, 100,
       NULL::bigint, NULL::timestamptz, now()
  FROM bench_t b CROSS JOIN metering_meter m WHERE m.slug = ANY(%(meters)s)
UNION ALL
SELECT b.tenant_id, m.id, 'day', %(month)s + make_interval(days => d), m.aggregation, 10 + d, 3, NULL, NULL, now()
  FROM bench_t b CROSS JOIN metering_meter m CROSS JOIN generate_series(0, 29) d WHERE m.slug = ANY(%(meters)s);

INSERT INTO billing_billingevent (tenant_id, tenant_slug, kind, meter_id, period_start, quantity, cumulative,
                                  amount_cents, currency, identifier, description, created_at)
SELECT b.tenant_id, 'bench', 'usage', m.id, %(month)s,
       b.overage * j / %(reports)s - b.overage * (j - 1) / %(reports)s, b.overage * j / %(reports)s,
       (b.overage * j / %(reports)s) * %(price)s / 3600 - (b.overage * (j - 1) / %(reports)s) * %(price)s / 3600,
       'usd', 'bench-recon:t' || b.tenant_id || ':' || j, 'bench', now()
  FROM bench_t b CROSS JOIN generate_series(1, %(reports)s) j JOIN metering_meter m ON m.slug = 'workspace_seconds';
INSERT INTO billing_billingevent (tenant_id, tenant_slug, kind, meter_id, period_start, quantity, cumulative,
                                  amount_cents, currency, identifier, description, created_at)
SELECT e.tenant_id, e.tenant_slug, e.kind, e.meter_id, e.period_start, e.quantity, e.cumulative, e.amount_cents,
       e.currency, e.identifier || ':twice', e.description, e.created_at
  FROM billing_billingevent e JOIN bench_t b ON b.tenant_id = e.tenant_id
 WHERE b.n %% 100 = 3 AND e.identifier = 'bench-recon:t' || b.tenant_id || ':' || %(reports)s;

INSERT INTO billing_delivery (event_id, provider, state, attempts, next_attempt_at, last_error, reference,
                              delivered_at, created_at)
SELECT e.id, 'invoice', CASE WHEN b.n %% 100 = 1 AND e.identifier LIKE '%%:' || %(reports)s THEN 'dead'
                             ELSE 'delivered' END, 1, now(), '', '', now(), now()
  FROM billing_billingevent e JOIN bench_t b ON b.tenant_id = e.tenant_id WHERE e.period_start = %(month)s;

INSERT INTO billing_invoice (tenant_id, tenant_slug, tenant_name, period_start, status, currency, total_cents,
                             created_at)
SELECT b.tenant_id, 'bench', 'bench', %(month)s, 'draft', 'usd', 0, now() FROM bench_t b;
INSERT INTO billing_invoiceline (invoice_id, event_id, description, quantity, unit, amount_cents)
SELECT i.id, e.id, 'bench', e.quantity, 'seconds', e.amount_cents
  FROM billing_billingevent e JOIN bench_t b ON b.tenant_id = e.tenant_id
  JOIN billing_delivery d ON d.event_id = e.id AND d.state = 'delivered'
  JOIN billing_invoice i ON i.tenant_id = e.tenant_id AND i.period_start = %(month)s
 WHERE e.period_start = %(month)s
   AND NOT (b.n %% 100 = 2 AND e.identifier = 'bench-recon:t' || b.tenant_id || ':' || %(reports)s);
ANALYZE metering_usagerollup; ANALYZE billing_billingevent; ANALYZE billing_delivery; ANALYZE billing_invoiceline;
"""


def bench_reconciliation(*, tenants):
    """A month of synthetic usage for `tenants` tenants x 5 meters, reconciled by `reconciliation_run` (the command
    and the nightly task's service): its time, and whether it found exactly the planted gaps."""
    from datetime import UTC, datetime

    from django.db import connection, transaction

    from billing.reconciliation import reconciliation_run

    ids, pro = _recon_tenants(tenants)
    month = datetime(*RECON_PERIOD, 1, tzinfo=UTC)
    params = {"ids": ids, "month": month, "meters": list(RECON_METERS), "reports": RECON_REPORTS,
              "allowance": pro.monthly_hours * 3600, "price": pro.overage_price_cents_per_hour}
    started = time.perf_counter()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(_RECON_SETUP, params)
    setup = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usagerollup WHERE tenant_id = ANY(%s)", [ids])
        rollups = cursor.fetchone()[0]
        cursor.execute("SELECT count(*) FROM billing_billingevent WHERE tenant_id = ANY(%s)", [ids])
        events = cursor.fetchone()[0]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    report = reconciliation_run(period_start=month)
    elapsed = time.perf_counter() - started
    expected = {kind: sum(1 for n in range(tenants) if n % 100 == rest)
                for kind, rest in (("used_not_reported", 1), ("reported_not_billed", 2), ("billed_not_metered", 3))}
    found = {}
    for gap in report["gaps"]:
        found[gap["kind"]] = found.get(gap["kind"], 0) + 1
    return {"tenants": tenants, "meters": len(RECON_METERS), "rollups": rollups, "billing_events": events,
            "setup_seconds": round(setup, 2), "seconds": round(elapsed, 3), "tenants_compared": report["tenants"],
            "gaps": found, "gaps_expected": expected, "exact": found == expected,
            "revenue_at_risk_cents": report["revenue_at_risk_cents"],
            "load_average": round(max(load_before, os.getloadavg()[0]), 2)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--drainers", type=int, default=1, help="concurrent drains (Celery workers)")
    parser.add_argument("--latency-ms", type=float, default=5.0, help="the provider's answer time")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--tenants", type=int, default=1000, help="reconciliation: tenants (5 meters each)")
    parser.add_argument("--only", choices=["outbox", "reconciliation"], help="run one half only")
    args = parser.parse_args()

    ensure_database()
    import django

    django.setup()
    results = {"bench": "billing", "database": os.environ["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0],
               "cpus": os.cpu_count()}
    verdicts = {}
    if args.only != "reconciliation":
        results["outbox"] = outbox = bench_outbox(events=args.events, drainers=args.drainers,
                                                  latency_ms=args.latency_ms, batch_size=args.batch_size)
        verdicts["outbox_events_per_s"] = (outbox["events_per_s"] >= TARGETS["outbox_events_per_s"]
                                           and outbox["exactly_once"] and not outbox["errors"])
    if args.only != "outbox":
        results["reconciliation"] = recon = bench_reconciliation(tenants=args.tenants)
        verdicts["reconcile_seconds"] = (recon["seconds"] <= TARGETS["reconcile_seconds"] and recon["exact"]
                                         and args.tenants >= 1000)
    results["targets"] = TARGETS
    results["verdicts"] = {key: "met" if ok else "MISSED" for key, ok in verdicts.items()}
    print(json.dumps(results))
    load = max(half["load_average"] for half in (results.get("outbox"), results.get("reconciliation")) if half)
    print(f"machine: {os.cpu_count()} CPUs shared with other work; 1-min load average: {load}")
    if "outbox" in results:
        print(f"outbox: {outbox['delivered']:,} of {outbox['events']:,} billing events delivered in "
              f"{outbox['seconds']} s by {outbox['drainers']} drainers to a provider answering in "
              f"{outbox['provider_latency_ms']} ms: {outbox['events_per_s']:,} events/s; "
              f"each exactly once at the provider: {outbox['exactly_once']}; errors: {len(outbox['errors'])} — "
              f"target {TARGETS['outbox_events_per_s']}/s: {results['verdicts']['outbox_events_per_s']}")
    if "reconciliation" in results:
        print(f"reconciliation: a month of {recon['tenants']:,} tenants x {recon['meters']} meters "
              f"({recon['rollups']:,} roll-ups, {recon['billing_events']:,} billing events) reconciled in "
              f"{recon['seconds']} s; gaps found {recon['gaps']} (planted {recon['gaps_expected']}): "
              f"exact: {recon['exact']}; revenue at risk {recon['revenue_at_risk_cents']:,} cents — target "
              f"<= {TARGETS['reconcile_seconds']:.0f} s for 1,000 tenants: {results['verdicts']['reconcile_seconds']}")


if __name__ == "__main__":
    main()
