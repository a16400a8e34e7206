"""Metering benchmark on PostgreSQL: REST batch ingestion, the internal bulk path, current-usage reads at 10 M events.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/hearth_bench .venv/bin/python bench/metering.py [--events 10000000]

Uses its own database (`hearth_bench` by default; created and migrated if missing). Prints one JSON line and a
human summary. Targets (issue 5): REST >= 20,000 events/s, internal >= 40,000 events/s, read p99 <= 10 ms.
"""
import argparse
import http.client
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
# Persistent connections: the ingestion statement is prepared once per connection.
os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/hearth_bench?conn_max_age=600")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
os.environ.setdefault("HEARTH_INSTANCE", "hearth-bench")

TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid):
    """CPU seconds (user + system) a process has used; 0 if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TCK


def backend_pids(exclude=()):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity "
                       "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        return [pid for (pid,) in cursor.fetchall() if pid not in exclude]


def load_average():
    return round(os.getloadavg()[0], 2)


TARGETS = {"rest_events_per_s": 20_000, "internal_events_per_s": 40_000, "read_p99_ms": 10.0}


def ensure_database():
    import psycopg

    url = os.environ["DATABASE_URL"]
    name = url.rsplit("/", 1)[1].split("?")[0]
    admin = url.rsplit("/", 1)[0] + "/postgres"
    name = name.split("?")[0]
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, check=True)


def setup_django():
    import django

    django.setup()


def bench_tenants(count):
    from tenants.models import Plan, Tenant

    plan = Plan.objects.get(slug="team")
    existing = set(Tenant.objects.filter(slug__startswith="bench-").values_list("slug", flat=True))
    Tenant.objects.bulk_create([
        Tenant(slug=f"bench-{n}", name=f"Bench {n}", plan=plan, synthetic=True)
        for n in range(count) if f"bench-{n}" not in existing
    ])
    return list(Tenant.objects.filter(slug__startswith="bench-").order_by("pk"))


def make_batches(tenants, *, batches, size, duplicate_ratio, meter, prefix):
    """Batches of `size` events; each batch repeats `duplicate_ratio` of the previous batch's ids."""
    now = datetime.now(UTC)
    previous = []
    out = []
    for b in range(batches):
        dups = [dict(e) for e in previous[: int(size * duplicate_ratio)]]
        fresh = [
            {"id": f"{prefix}-{b}-{i}-{uuid.uuid4().hex[:8]}", "tenant": tenants[(b * size + i) % len(tenants)].slug,
             "meter": meter, "quantity": 1 + (i % 97), "timestamp": (now - timedelta(seconds=i)).isoformat(),
             "subject": {"user": i % 50, "workspace": i % 200}}
            for i in range(size - len(dups))
        ]
        batch = fresh + dups
        out.append(batch)
        previous = fresh
    return out


def bench_internal(tenants, *, batches, size, threads):
    """The internal bulk path, `threads` connections at once; wall-clock rate and a CPU-time projection."""
    from django.db import connection

    from metering.services import usage_record_many

    data = make_batches(tenants, batches=batches, size=size, duplicate_ratio=0.1, meter="ai_builder_tokens",
                        prefix=f"int-{uuid.uuid4().hex[:6]}")
    # Internal callers pass Tenant objects and datetimes, not slugs and strings.
    by_slug = {t.slug: t for t in tenants}
    for batch in data:
        for event in batch:
            event["tenant"] = by_slug[event["tenant"]]
            event["timestamp"] = datetime.fromisoformat(event["timestamp"])
    usage_record_many(data[0])  # warm up (meter cache, temporary table)
    work = data[1:]
    totals = {"accepted": 0, "duplicates": 0, "server_cpu": 0.0}
    lock = threading.Lock()
    barrier = threading.Barrier(threads + 1)

    def run(share):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
        usage_record_many(share[0][:10])
        barrier.wait()
        cpu0 = proc_cpu(backend)
        for batch in share:
            result = usage_record_many(batch)
            with lock:
                totals["accepted"] += result.accepted
                totals["duplicates"] += result.duplicates
        with lock:
            totals["server_cpu"] += proc_cpu(backend) - cpu0
        connection.close()

    workers = [threading.Thread(target=run, args=(work[n::threads],)) for n in range(threads)]
    for worker in workers:
        worker.start()
    barrier.wait()
    client0, started, load0 = time.process_time(), time.perf_counter(), load_average()
    for worker in workers:
        worker.join()
    elapsed, client_cpu = time.perf_counter() - started, time.process_time() - client0
    sent = sum(len(b) for b in work)
    cpu = client_cpu + totals["server_cpu"]
    return {"events": sent, "accepted": totals["accepted"], "duplicates": totals["duplicates"], "threads": threads,
            "seconds": round(elapsed, 3), "events_per_s": round(sent / elapsed),
            "cpu_ms_per_1000": round(1000 * cpu / (sent / 1000), 2),
            "projected_events_per_s_dedicated_cpus": round(sent / (cpu / min(os.cpu_count(), max(threads, 1) * 2))),
            "load_average": load0}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port, workers):
    env = {**os.environ, "DEBUG": "false", "LOG_LEVEL": "WARNING"}
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/gunicorn"), "config.wsgi:application", "--bind", f"127.0.0.1:{port}",
         "--workers", str(workers), "--worker-class", "sync", "--keep-alive", "30", "--log-level", "warning"],
        cwd=ROOT, env=env, start_new_session=True,
    )
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/healthz")
            conn.getresponse().read()
            return proc
        except OSError:
            time.sleep(0.3)
    proc.kill()
    raise RuntimeError("the web server did not start")


def bench_rest(tenants, *, batches, size, clients, workers):
    from metering.tokens import service_token_create

    _, token = service_token_create(name="bench", meters=["ai_builder_tokens"])
    data = make_batches(tenants, batches=batches, size=size, duplicate_ratio=0.1, meter="ai_builder_tokens",
                        prefix=f"rest-{uuid.uuid4().hex[:6]}")
    bodies = [json.dumps({"events": batch}).encode() for batch in data]
    port = free_port()
    proc = start_server(port, workers)
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    totals = {"accepted": 0, "duplicates": 0, "rejected": 0, "errors": 0}
    latencies = []
    lock = threading.Lock()
    queue = list(enumerate(bodies))

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                _, body = queue.pop(0)
            t0 = time.perf_counter()
            conn.request("POST", "/api/v1/usage/events", body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            dt = time.perf_counter() - t0
            with lock:
                latencies.append(dt)
                if response.status != 200:
                    totals["errors"] += 1
                    continue
                answer = json.loads(payload)
                totals["accepted"] += answer["accepted"]
                totals["duplicates"] += answer["duplicates"]
                totals["rejected"] += len(answer["rejected"])
        conn.close()

    try:
        # Warm-up: every worker loads Django and its meter cache.
        warm = [threading.Thread(target=client) for _ in range(clients)]
        queue[:] = list(enumerate(bodies[: clients * 2]))
        for t in warm:
            t.start()
        for t in warm:
            t.join()
        totals.update(accepted=0, duplicates=0, rejected=0, errors=0)
        latencies.clear()
        queue[:] = list(enumerate(bodies[clients * 2:]))
        sent = sum(len(b) for b in data[clients * 2:])
        threads = [threading.Thread(target=client) for _ in range(clients)]
        server_pids = [int(p) for p in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                                      text=True).stdout.split()] + backend_pids()
        cpu0 = {pid: proc_cpu(pid) for pid in server_pids}
        client0, load0 = time.process_time(), load_average()
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - started
        server_cpu = sum(proc_cpu(pid) - cpu0[pid] for pid in server_pids)
        cpu = server_cpu + time.process_time() - client0
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    latencies.sort()
    return {"events": sent, **totals, "seconds": round(elapsed, 3), "events_per_s": round(sent / elapsed),
            "batch_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
            "batch_p99_ms": round(1000 * latencies[int(len(latencies) * 0.99) - 1], 1),
            "clients": clients, "workers": workers, "cpu_ms_per_1000": round(1000 * cpu / (sent / 1000), 2),
            "projected_events_per_s_dedicated_cpus": round(sent / (cpu / os.cpu_count())), "load_average": load0}


GENERATE_SQL = """
WITH t AS (SELECT id, slug, row_number() OVER (ORDER BY id) - 1 AS rn
           FROM tenants_tenant WHERE slug LIKE 'bench-%%'),
     m AS (SELECT id, CASE slug WHEN 'egress_bytes' THEN 0 ELSE 1 END AS kind
           FROM metering_meter WHERE slug IN ('egress_bytes', 'workspace_seconds'))
INSERT INTO metering_usageevent (event_id, tenant_id, tenant_slug, meter_id, quantity, subject, "timestamp",
                                 source, reason, actor_id, recorded_at)
SELECT 'gen-' || %(run)s || '-' || g, t.id, t.slug, m.id, 1 + (g %% 120), '{}'::jsonb,
       %(start)s::timestamptz + ((g %% %(span)s) * interval '1 second'), 'internal', '', NULL, now()
FROM generate_series(%(lo)s, %(hi)s) AS g
JOIN t ON t.rn = g %% %(tenants)s
JOIN m ON m.kind = CASE WHEN g %% 3 = 0 THEN 0 ELSE 1 END
"""

REBUILD_ROLLUPS_SQL = """
DELETE FROM metering_usagerollup WHERE tenant_id IN (SELECT id FROM tenants_tenant WHERE slug LIKE 'bench-%%');
INSERT INTO metering_usagerollup (tenant_id, meter_id, period, period_start, aggregation, quantity, event_count,
                                  last_quantity, last_at, updated_at)
SELECT e.tenant_id, e.meter_id, p.period, p.period_start, m.aggregation,
       CASE WHEN m.aggregation = 'max' THEN max(e.quantity) ELSE sum(e.quantity) END, count(*),
       (array_agg(e.quantity ORDER BY e."timestamp" DESC))[1], max(e."timestamp"), now()
FROM metering_usageevent e
JOIN metering_meter m ON m.id = e.meter_id
CROSS JOIN LATERAL (VALUES ('day', date_trunc('day', e."timestamp" AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'),
                           ('month', date_trunc('month', e."timestamp" AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'))
     AS p(period, period_start)
WHERE e.tenant_slug LIKE 'bench-%%'
GROUP BY e.tenant_id, e.meter_id, p.period, p.period_start, m.aggregation;
"""


def ensure_events(target, tenants):
    """Top the events table up to `target` rows with generate_series (in SQL: seconds, not hours), then rebuild
    the bench tenants' roll-ups from their events so both agree."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM metering_usageevent")
        have = cursor.fetchone()[0]
    missing = target - have
    generated = 0
    if missing > 0:
        now = datetime.now(UTC)
        start = now - timedelta(days=25)
        span = int((now - start).total_seconds())
        run = uuid.uuid4().hex[:6]
        chunk = 1_000_000
        for lo in range(0, missing, chunk):
            hi = min(lo + chunk, missing) - 1
            with connection.cursor() as cursor:
                cursor.execute(GENERATE_SQL, {"run": run, "start": start, "span": span, "lo": lo, "hi": hi,
                                              "tenants": len(tenants)})
            generated += hi - lo + 1
            print(f"  generated {have + generated:,} events", file=sys.stderr, flush=True)
        with connection.cursor() as cursor:
            cursor.execute(REBUILD_ROLLUPS_SQL)
            cursor.execute("ANALYZE metering_usageevent")
            cursor.execute("ANALYZE metering_usagerollup")
    return have + generated, generated


def check_consistency(tenant):
    """The month roll-ups of one tenant equal the sum of its distinct events (a full scan of its events)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("""
            SELECT coalesce(sum(quantity), 0) FROM metering_usagerollup
            WHERE tenant_id = %s AND period = 'month' AND aggregation = 'sum'""", [tenant.pk])
        rolled = cursor.fetchone()[0]
        cursor.execute("""
            SELECT coalesce(sum(e.quantity), 0) FROM metering_usageevent e JOIN metering_meter m ON m.id = e.meter_id
            WHERE e.tenant_id = %s AND m.aggregation = 'sum'""", [tenant.pk])
        events = cursor.fetchone()[0]
    return int(rolled), int(events)


def bench_reads(tenants, *, samples):
    from django.db import connection

    from metering.selectors import usage_current

    connection.ensure_connection()
    for tenant in tenants[:20]:
        usage_current(tenant=tenant)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    timings = []
    cpu0, client0, load0 = proc_cpu(backend), time.process_time(), load_average()
    for _ in range(samples):
        tenant = random.choice(tenants)
        t0 = time.perf_counter()
        usage_current(tenant=tenant)
        timings.append(time.perf_counter() - t0)
    cpu = proc_cpu(backend) - cpu0 + time.process_time() - client0
    timings.sort()
    return {"samples": samples, "p50_ms": round(1000 * statistics.median(timings), 3),
            "p99_ms": round(1000 * timings[int(samples * 0.99) - 1], 3), "max_ms": round(1000 * timings[-1], 3),
            "cpu_ms_per_read": round(1000 * cpu / samples, 3), "load_average": load0}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000_000, help="events stored for the read benchmark")
    parser.add_argument("--tenants", type=int, default=1000)
    parser.add_argument("--internal-batches", type=int, default=200,
                        help="1,000-event batches (10%% duplicates) on the internal path; 60 took 1.5 s, too short "
                             "for a steady figure on a shared machine")
    parser.add_argument("--internal-threads", type=int, default=4)
    parser.add_argument("--rest-batches", type=int, default=60)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--reads", type=int, default=5000)
    parser.add_argument("--skip-rest", action="store_true")
    parser.add_argument("--skip-reads", action="store_true")
    args = parser.parse_args()

    ensure_database()
    setup_django()
    tenants = bench_tenants(args.tenants)
    results = {"bench": "metering", "database": os.environ["DATABASE_URL"].rsplit("/", 1)[1].split("?")[0],
               "cpus": os.cpu_count()}
    results["internal"] = bench_internal(tenants, batches=args.internal_batches, size=1000,
                                         threads=args.internal_threads)
    if not args.skip_rest:
        results["rest"] = bench_rest(tenants, batches=args.rest_batches, size=1000, clients=args.clients,
                                     workers=args.workers)
    if not args.skip_reads:
        stored, generated = ensure_events(args.events, tenants)
        rolled, events = check_consistency(random.choice(tenants))
        results["reads"] = {"events_stored": stored, "events_generated_now": generated,
                            **bench_reads(tenants, samples=args.reads),
                            "consistency_sample": {"rollups": rolled, "events": events, "equal": rolled == events}}
    results["targets"] = TARGETS
    verdicts = {"internal_events_per_s": results["internal"]["events_per_s"] >= TARGETS["internal_events_per_s"]}
    if "rest" in results:
        verdicts["rest_events_per_s"] = results["rest"]["events_per_s"] >= TARGETS["rest_events_per_s"]
    if "reads" in results:
        verdicts["read_p99_ms"] = results["reads"]["p99_ms"] <= TARGETS["read_p99_ms"]
    results["verdicts"] = {key: "met" if ok else "MISSED" for key, ok in verdicts.items()}
    print(json.dumps(results))
    internal = results["internal"]
    print(f"machine: {os.cpu_count()} CPUs shared with other work; 1-min load average during the runs: "
          f"{internal['load_average']}{' / ' + str(results['rest']['load_average']) if 'rest' in results else ''}")
    print(f"internal bulk path ({internal['threads']} connections): {internal['events_per_s']:,} events/s wall clock "
          f"({internal['events']:,} events, {internal['duplicates']:,} duplicates); {internal['cpu_ms_per_1000']} "
          f"CPU-ms per 1,000 events (client + PostgreSQL) = {internal['projected_events_per_s_dedicated_cpus']:,}"
          f" events/s on dedicated CPUs — target {TARGETS['internal_events_per_s']:,}: "
          f"{results['verdicts']['internal_events_per_s']}")
    if "rest" in results:
        rest = results["rest"]
        print(f"REST batches: {rest['events_per_s']:,} events/s wall clock with {rest['clients']} clients and "
              f"{rest['workers']} gunicorn workers, batch p50 {rest['batch_p50_ms']} ms, p99 {rest['batch_p99_ms']} ms,"
              f" errors {rest['errors']}; {rest['cpu_ms_per_1000']} CPU-ms per 1,000 events (client, server, "
              f"PostgreSQL) = {rest['projected_events_per_s_dedicated_cpus']:,} events/s on dedicated CPUs — target "
              f"{TARGETS['rest_events_per_s']:,}: {results['verdicts']['rest_events_per_s']}")
    if "reads" in results:
        reads = results["reads"]
        print(f"current usage read with {reads['events_stored']:,} events stored: p50 {reads['p50_ms']} ms, "
              f"p99 {reads['p99_ms']} ms, {reads['cpu_ms_per_read']} CPU-ms per read (load {reads['load_average']})"
              f" — target p99 {TARGETS['read_p99_ms']} ms: {results['verdicts']['read_p99_ms']}; roll-ups == events "
              f"for a sampled tenant: {reads['consistency_sample']['equal']}")


if __name__ == "__main__":
    main()
