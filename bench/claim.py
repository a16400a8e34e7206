"""Claim benchmark: opening a workspace from the warm pool and from an empty pool, on real Docker and PostgreSQL.

    DATABASE_URL=postgres://... .venv/bin/python bench/claim.py [--seq 30] [--concurrent 20] [--rounds 3]
                                                               [--cold 10] [--burst 50] [--burst-target 3]

Times `workspaces.services.workspace_open` (checks, the claim transaction, the storage bind mount, the session
token) as the portal and the API call it, for the tiny image:
  sequential  — one client, warm pool, one open after another;
  concurrent  — N opens released at once against a warm pool of N, `rounds` times. By default they are served
                as a web tier of gunicorn workers serves them: `--workers` pre-started worker processes (default
                2 × cores + 1, gunicorn's advice; `--threads` handler threads each, default 4),
                each with its DB connection open and the app loaded (gc.freeze, as config/wsgi.py), take the N
                opens from one queue. All N are queued, then released together; each latency runs from that
                release to the open's return, waiting for a free worker included. One unmeasured round first
                (`--warmup-rounds`) does what a long-running worker has long done (prepared statements, catalog
                caches, broker connection), repeated (at most 5 more) until every handler thread has had one.
                These defaults are the shape scripts/serve-web.sh runs gunicorn in.
                `--clients threads`: N threads in this process, one GIL (the old default); `--clients processes`
                (or `--processes`): a fresh process per open;
  cold        — empty pool (warm minimum and maximum 0): every open starts a container;
  burst       — `--burst` opens at once against a fixed pool of `--burst-target`, with a refiller process doing what
                the Celery worker does after each claim (pool_fill of the template, again as soon as it returns).
  ramp        — `--ramp` opens (default 50) over `--ramp-seconds` (60) at a linearly rising rate (the k-th at
                T·√(k/N): from none to 2N/T a second), each by a user of their own, against the pool that follows
                demand (warm minimum `--ramp-min`, maximum `--ramp-max`), with a refiller process doing what the
                Celery worker and beat do: pool_fill (the demand target, decided per call) on the beat's tick every
                `--ramp-tick` s and, as the claim's nudge, 0.25 s after any open. Reports the opens' wait
                percentiles, the cold starts, and every second the target and the WARM containers.
`--only burst,cold` runs only those scenarios.
Prints one JSON line, then a table. Sets up its own node, template and synthetic tenant; its containers carry
the instance label `<HEARTH_INSTANCE>-claimbench` and are removed at the end. Needs root (mounts) and dockerd.
A real HAProxy gateway (own run dir, free port) gets each open's route, unless `--no-gateway`.
CPU per open: the opening thread's CPU time (Python), and the PostgreSQL backends' CPU (from /proc) per open.
"""
import argparse
import atexit
import gc
import json
import multiprocessing
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stats import pct as _pct

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
os.environ["HEARTH_INSTANCE"] = os.environ.get("HEARTH_INSTANCE", "hearth") + "-claimbench"
os.environ.setdefault("STORAGE_ROOT", str(ROOT / "var" / "bench-storage"))
# The bench's own gateway: a short run dir (unix socket paths are limited to 108 bytes) and a free port.
_OWN_GATEWAY_DIR = "GATEWAY_RUN_DIR" not in os.environ
if _OWN_GATEWAY_DIR:
    os.environ["GATEWAY_RUN_DIR"] = tempfile.mkdtemp(prefix="hclaim", dir="/tmp")
    atexit.register(shutil.rmtree, os.environ["GATEWAY_RUN_DIR"], True)
with socket.socket() as _s:
    _s.bind(("127.0.0.1", 0))
    os.environ.setdefault("HEARTH_GATEWAY_PORT", str(_s.getsockname()[1]))

import django  # noqa: E402

django.setup()
# Traces as the web process would send them when OTEL_* ask (bench/telemetry_overhead.py runs both ways).
from core import telemetry  # noqa: E402

telemetry.telemetry_setup(process="bench")

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.db.migrations.executor import MigrationExecutor  # noqa: E402

from workspaces import pool, services, storage  # noqa: E402
from workspaces.images import image_ensure  # noqa: E402
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate  # noqa: E402
from workspaces.runtime import DockerRuntime  # noqa: E402

TINY = "hearth/tiny:1"
SCENARIOS_IN_ORDER = ("sequential", "concurrent", "cold", "burst", "ramp")
SCENARIOS = set(SCENARIOS_IN_ORDER)


def pct(values, p):
    return _pct(values, p, scale=1000)


def stats(samples):
    times = [t for t, _ in samples]
    warm = sum(1 for _, cold in samples if not cold)
    return {"n": len(times), "p50_ms": pct(times, 50), "p95_ms": pct(times, 95), "p99_ms": pct(times, 99),
            "max_ms": pct(times, 100), "hit_rate": round(warm / len(samples), 3) if samples else None}


def setup(n_users):
    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        print("migrating the benchmark database (first run: about a minute)…", file=sys.stderr)
        call_command("migrate", verbosity=0)
    from tenants.models import Membership, Plan, Tenant, User

    image_ensure(TINY)
    node, _ = Node.objects.update_or_create(
        name="claimbench", defaults=dict(engine_url=settings.DOCKER_HOST, cpus=512, memory_mb=512 * 1024,
                                         max_containers=500, enabled=True, draining=False,
                                         # healthy, whatever an earlier run's engine timeouts left
                                         failed_calls=0, last_error="", last_seen_at=None))
    Node.objects.exclude(pk=node.pk).update(enabled=False)
    template, _ = WorkspaceTemplate.objects.update_or_create(
        slug="claimbench-tiny", defaults=dict(name="bench tiny", image=TINY, internal_port=8080, cpus=0.1,
                                              memory_mb=64, pids_limit=64, warm_min=0, warm_max=0, max_containers=400,
                                              enabled=True, pool_paused=False))
    plan = Plan.objects.filter(max_concurrent_workspaces__isnull=True).order_by("sort_order").first()
    tenant, _ = Tenant.objects.get_or_create(slug="claimbench", defaults=dict(name="Claim bench", plan=plan,
                                                                              synthetic=True))
    pairs = []
    for i in range(n_users):
        user, _ = User.objects.get_or_create(email=f"bench{i}@claimbench.test")
        Membership.objects.get_or_create(tenant=tenant, user=user)
        workspace = Workspace.objects.filter(tenant=tenant, owner=user, deleted_at__isnull=True).first()
        if workspace is None:
            workspace = services.workspace_create(tenant=tenant, owner=user, name="bench", template=template)
        pairs.append((workspace, user))
    return node, template, pairs


def set_target(template, target):
    WorkspaceTemplate.objects.filter(pk=template.pk).update(warm_min=target, warm_max=target)
    template.warm_min = template.warm_max = target


def fill(template, target):
    set_target(template, target)
    pool.pool_fill(template_id=template.pk)
    warm = Container.objects.filter(template=template, state=Container.State.WARM).count()
    if warm < target:
        raise SystemExit(f"the pool reached only {warm} of {target} warm containers")


def close_all():
    for session in Session.objects.filter(ended_at__isnull=True, workspace__tenant__slug="claimbench"):
        services.session_end(session=session, reason=Session.EndReason.CLOSED)


_cpu = []  # thread CPU seconds of each open in this thread: what the open costs regardless of machine load


def timed_open(workspace, user):
    cpu, started = time.thread_time(), time.perf_counter()
    with telemetry.span("bench.open"):  # one trace per open, as the web request's span makes it
        opened = services.workspace_open(workspace=workspace, user=user)
    elapsed = time.perf_counter() - started
    _cpu.append(time.thread_time() - cpu)
    return elapsed, opened.session.cold_start


def run_parallel(pairs, processes=False):
    """All clients released at once; returns (samples, errors). Threads (a DB connection each) by default."""
    if not processes:
        return _run_threads(pairs)
    return _run_processes(pairs)


def _run_threads(pairs):
    barrier, errors = threading.Barrier(len(pairs)), []

    def client(pair):
        try:
            with connection.cursor() as cursor:  # connect first: a web worker reuses its connection
                cursor.execute("SELECT 1")
            barrier.wait()
            return timed_open(*pair)
        except Exception as exc:  # counted as a failure of the run
            errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            connections.close_all()

    with ThreadPoolExecutor(len(pairs)) as executor:
        got = list(executor.map(client, pairs))
    return [r for r in got if r is not None], errors


def _run_processes(pairs):
    """One process per client, like web workers."""
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(len(pairs)), ctx.Queue()
    connections.close_all()  # children must not share the parent's database socket

    def client(pair):
        try:
            with connection.cursor() as cursor:  # connect first: a web worker reuses its connection
                cursor.execute("SELECT 1")
            barrier.wait()
            results.put(("ok", timed_open(*pair)))
        except Exception as exc:  # counted as a failure of the run
            results.put(("error", f"{type(exc).__name__}: {exc}"))
        finally:
            connections.close_all()

    processes = [ctx.Process(target=client, args=(pair,)) for pair in pairs]
    for process in processes:
        process.start()
    got = [results.get(timeout=300) for _ in processes]
    for process in processes:
        process.join()
    return [r for kind, r in got if kind == "ok"], [r for kind, r in got if kind == "error"]


def _refiller_start(template):
    """The Celery worker's part in a burst: pool_fill of the template, again as soon as it returns.

    In the running stack every claim nudges `workspaces.tasks.pool_fill` (coalesced per template) and a worker
    process runs it, so during a burst a refill is always pending. It runs here in a process of its own, like the
    worker: its starts share the node's provisioning slots with the opens through PostgreSQL, and the opens see its
    containers turn WARM by polling, not through this process's wake-ups.
    """
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    connections.close_all()  # the child must not share the parent's database socket

    def loop():
        while not stop.is_set():
            try:
                pool.pool_fill(template_id=template.pk)
            except Exception as exc:
                print(f"refill: {exc}", file=sys.stderr)
            stop.wait(0.05)
        connections.close_all()

    process = ctx.Process(target=loop, daemon=True)
    process.start()
    return process, stop


def _demand_refiller_start(template, tick_s, nudge, workers=2):
    """The Celery side of the demand-following pool, as the Procfile's worker (`--concurrency=2`) and beat run it:
    `workers` processes run pool_fill of the template 0.25 s (the nudger's coalescing) after an open sets `nudge`,
    whichever is free first, and the first also on the beat's tick. Returns [(process, stop)]."""
    ctx = multiprocessing.get_context("fork")
    stop = ctx.Event()
    connections.close_all()

    def loop(ticks):
        next_tick = time.monotonic()
        while not stop.is_set():
            wait = max(0.0, next_tick - time.monotonic()) if ticks else 1.0
            if nudge.wait(wait):
                nudge.clear()
                time.sleep(0.25)
            elif ticks:
                next_tick = time.monotonic() + tick_s
            else:
                continue
            try:
                pool.pool_fill(template_id=template.pk)
            except Exception as exc:
                print(f"refill: {exc}", file=sys.stderr)
        connections.close_all()

    processes = [ctx.Process(target=loop, args=(i == 0,), daemon=True) for i in range(workers)]
    for process in processes:
        process.start()
    return [(process, stop) for process in processes]


def run_ramp(template, pairs, *, seconds, tick_s, minimum, maximum):
    """Opens at a linearly rising rate against the demand-following pool; returns the scenario's figures."""
    from workspaces.pool import opens

    WorkspaceTemplate.objects.filter(pk=template.pk).update(warm_min=minimum, warm_max=maximum, pool_target=None,
                                                             pool_above_since=None)
    opens.opens_forget(template.pk)  # an earlier run's opens are not this one's demand
    pool.pool_fill(template_id=template.pk)
    n = len(pairs)
    schedule = [seconds * ((k + 1) / n) ** 0.5 for k in range(n)]
    nudge = multiprocessing.get_context("fork").Event()
    refiller = _demand_refiller_start(template, tick_s, nudge)
    timeline, watching = [], threading.Event()
    started = time.perf_counter()

    reasons = []

    def watch():  # every second: the target the tick decided and the WARM containers; every 10 s why
        while not watching.wait(1.0):
            t, reason = WorkspaceTemplate.objects.filter(pk=template.pk).values_list(
                "pool_target", "pool_reason").first()
            warm = Container.objects.filter(template=template, state=Container.State.WARM).count()
            timeline.append([round(time.perf_counter() - started), t, warm])
            if len(timeline) % 10 == 0:
                reasons.append(f"{timeline[-1][0]} s: {reason}")
        connections.close_all()

    errors = []

    def client(k):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            time.sleep(max(0.0, schedule[k] - (time.perf_counter() - started)))
            sample = timed_open(*pairs[k])
            nudge.set()
            return sample
        except Exception as exc:  # counted as a failure of the run
            errors.append(f"{type(exc).__name__}: {exc}")
            return None
        finally:
            connections.close_all()

    watcher = threading.Thread(target=watch, daemon=True)
    load = os.getloadavg()[0]
    watcher.start()
    with ThreadPoolExecutor(n) as executor:
        samples = [r for r in executor.map(client, range(n)) if r is not None]
    watching.set()
    watcher.join()
    for one in refiller:
        _refiller_stop(one)
    cold = [t for t, was_cold in samples if was_cold]
    warm = [t for t, was_cold in samples if not was_cold]
    return {**stats(samples), "succeeded": len(samples), "failed": len(errors), "errors": errors[:3],
            "cold_starts": len(cold), "cold_p50_ms": pct(cold, 50) if cold else None,
            "warm_p50_ms": pct(warm, 50) if warm else None, "warm_p99_ms": pct(warm, 99) if warm else None,
            "sorted_s": [round(t, 2) for t in sorted(t for t, _ in samples)], "reasons": reasons,
            "seconds": seconds, "tick_s": tick_s, "warm_min": minimum, "warm_max": maximum,
            "load_avg": round(load, 2), "second_target_warm": timeline}


def _refiller_stop(refiller):
    process, stop = refiller
    stop.set()
    process.join(timeout=120)


class WorkerPool:
    """`size` pre-started worker processes, as gunicorn runs the web tier: each keeps its DB connection (and
    whatever the first open warmed) and serves opens from one shared queue, one at a time."""

    def __init__(self, size, pairs, threads=1):
        ctx = multiprocessing.get_context("fork")
        connections.close_all()  # children must not share the parent's database socket
        self.size, self.threads = size, threads
        self.served = set()  # handler threads that have opened once (their connection is warm)
        self.jobs, self.results = ctx.SimpleQueue(), ctx.SimpleQueue()  # put() writes at once: no feeder thread
        self.barrier = ctx.Barrier(size * threads + 1)
        self.released_at = ctx.Value("d", 0.0, lock=False)
        self.processes = [ctx.Process(target=self._process, args=(pairs,), daemon=True) for _ in range(size)]
        for process in self.processes:
            process.start()
        # PostgreSQL backend pid of each worker thread (a DB connection each, as Django gives every thread).
        self.backends = [self.results.get() for _ in range(size * threads)]

    def _process(self, pairs):
        gc.freeze()  # as config/wsgi.py does in each web worker once the app is loaded
        handlers = [threading.Thread(target=self._serve, args=(pairs,)) for _ in range(self.threads)]
        for handler in handlers:
            handler.start()
        for handler in handlers:
            handler.join()

    def _serve(self, pairs):
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_backend_pid()")
            self.results.put(cursor.fetchone()[0])
        while True:
            self.barrier.wait()
            released_at, done = self.released_at.value, []
            while (job := self.jobs.get()) is not None:
                if job == "stop":
                    connections.close_all()
                    return
                workspace, user = pairs[job]
                try:
                    cpu = time.thread_time()
                    with telemetry.span("bench.open"):
                        opened = services.workspace_open(workspace=workspace, user=user)
                    returned = time.perf_counter()
                    done.append(("ok", (returned - released_at, opened.session.cold_start), time.thread_time() - cpu))
                except Exception as exc:  # counted as a failure of the run
                    done.append(("error", f"{type(exc).__name__}: {exc}", None))
            # After the round: reporting costs nothing while opens are in flight.
            self.results.put((f"{os.getpid()}.{threading.get_ident()}", done))

    def round(self, indices):
        """Queue the opens, release every worker at once; returns (samples, errors, thread CPU per open)."""
        for i in indices:
            self.jobs.put(i)
        for _ in range(self.size * self.threads):
            self.jobs.put(None)
        self.released_at.value = time.perf_counter()
        self.barrier.wait(timeout=60)
        reports = [self.results.get() for _ in range(self.size * self.threads)]
        self.served.update(handler for handler, done in reports if any(kind == "ok" for kind, _, _ in done))
        done = [item for _, items in reports for item in items]
        return ([r for kind, r, _ in done if kind == "ok"], [r for kind, r, _ in done if kind == "error"],
                [cpu for kind, _, cpu in done if kind == "ok"])

    @property
    def all_warm(self):
        return len(self.served) == self.size * self.threads

    def stop(self):
        for _ in range(self.size * self.threads):
            self.jobs.put("stop")
        try:
            self.barrier.wait(timeout=10)
        except threading.BrokenBarrierError:
            pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()


def backend_cpu(pids):
    """CPU seconds the PostgreSQL backends `pids` (on this host) have used so far, from /proc/<pid>/schedstat."""
    total = 0.0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            return None
    return total


def backend_pid():
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        return cursor.fetchone()[0]


def start_gateway():
    """HAProxy in its own run dir, so each open's route add is real; None (routes only logged) without it."""
    from workspaces.gateway.process import GatewayProcess

    try:
        process = GatewayProcess()
        process.start()
    except Exception as exc:
        print(f"no gateway ({exc}): route adds fail fast and are logged", file=sys.stderr)
        return None
    return process


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--burst-target", type=int, default=3)
    parser.add_argument("--ramp", type=int, default=50, help="opens in the ramp scenario")
    parser.add_argument("--ramp-seconds", type=float, default=60.0)
    parser.add_argument("--ramp-min", type=int, default=2, help="the template's warm minimum in the ramp")
    parser.add_argument("--ramp-max", type=int, default=20, help="the template's warm maximum in the ramp")
    parser.add_argument("--ramp-tick", type=float, default=5.0, help="the beat's pool-fill tick (s) in the ramp")
    parser.add_argument("--clients", choices=("workers", "threads", "processes"), default="workers",
                        help="how the concurrent opens are served (see above)")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1,
                        help="worker processes for --clients workers (default 2 × cores + 1)")
    parser.add_argument("--threads", type=int, default=4,
                        help="threads per worker process for --clients workers (a DB connection each; default 4, "
                             "as scripts/serve-web.sh runs gunicorn)")
    parser.add_argument("--warmup-rounds", type=int, default=1, help="unmeasured rounds first (--clients workers)")
    parser.add_argument("--processes", action="store_true", help="same as --clients processes")
    parser.add_argument("--no-gateway", action="store_true", help="do not start HAProxy (route adds then fail fast)")
    parser.add_argument("--only", default=",".join(SCENARIOS_IN_ORDER),
                        help="scenarios to run, comma-separated: " + ", ".join(SCENARIOS_IN_ORDER))
    args = parser.parse_args()
    if args.processes:
        args.clients = "processes"
    only = set(args.only.split(","))
    if only - SCENARIOS:
        parser.error(f"--only: unknown scenario {', '.join(sorted(only - SCENARIOS))} "
                     f"(choose from {', '.join(sorted(SCENARIOS))})")
    args.seq = args.seq if "sequential" in only else 0
    args.rounds = args.rounds if "concurrent" in only else 0
    args.cold = args.cold if "cold" in only else 0
    args.burst = args.burst if "burst" in only else 0
    args.ramp = args.ramp if "ramp" in only else 0

    node, template, pairs = setup(max(args.seq, args.concurrent, args.cold, args.burst, args.ramp))
    close_all()
    gc.freeze()  # this process serves the sequential opens as a web worker would (config/wsgi.py)
    results = {"instance": settings.HEARTH_INSTANCE, "image": TINY, "cpus": os.cpu_count(),
               "load_avg_before": os.getloadavg()[0], "telemetry": telemetry.enabled()}
    gateway = None if args.no_gateway else start_gateway()
    results["gateway"] = gateway is not None
    # Forked before this process opens anything (as gunicorn forks its workers from a master that serves nothing).
    # Only for the concurrent scenario: `--only sequential` forks no workers and runs no concurrent warm-up round.
    workers = (WorkerPool(args.workers, pairs[: args.concurrent], args.threads)
               if args.clients == "workers" and args.rounds else None)
    try:
        # Sequential warm opens.
        if args.seq:
            fill(template, args.seq)
            _cpu.clear()
            pids = [backend_pid()]
            pg_cpu, process_cpu = backend_cpu(pids), time.process_time()
            samples = [timed_open(*pair) for pair in pairs[: args.seq]]
            telemetry.flush()  # what the opens' spans cost to export counts too (the exporter's thread)
            process_cpu = time.process_time() - process_cpu
            pg_cpu = backend_cpu(pids) - pg_cpu if pg_cpu is not None else None
            results["sequential_warm"] = {**stats(samples), "opens_per_s": round(len(samples) / sum(
                                              t for t, _ in samples), 1), "cpu_p50_ms": pct(_cpu, 50),
                                          "cpu_mean_ms": round(sum(_cpu) / len(_cpu) * 1000, 2),
                                          "process_cpu_mean_ms": round(process_cpu / len(samples) * 1000, 2),
                                          "pg_cpu_mean_ms": round(pg_cpu / len(samples) * 1000, 2) if pg_cpu else None,
                                          "load_avg": os.getloadavg()[0]}
            close_all()

        # Concurrent clients against a warm pool of the same size.
        samples, cpus, pg_cpu, per_round = [], [], 0.0, []
        warmups, round_no = (args.warmup_rounds if workers else 0), 0
        while round_no < args.rounds + warmups:
            round_no += 1
            fill(template, args.concurrent)
            if workers:
                before = backend_cpu(workers.backends)
                got, errors, got_cpu = workers.round(range(args.concurrent))
                after = backend_cpu(workers.backends)
            else:
                _cpu.clear()
                got, errors = run_parallel(pairs[: args.concurrent], args.clients == "processes")
                got_cpu, before, after = list(_cpu), None, None
            if errors:
                raise SystemExit(f"concurrent opens failed: {errors[:3]}")
            if workers and round_no <= warmups:
                # With threads, a handler may have had no open yet: warm up until each has had one (at most 5 more).
                if round_no == warmups and not workers.all_warm and warmups < args.warmup_rounds + 5:
                    warmups += 1
                close_all()
                continue
            samples += got
            per_round.append([pct([t for t, _ in got], 50), pct([t for t, _ in got], 100)])
            cpus += got_cpu
            pg_cpu = pg_cpu + (after - before) if pg_cpu is not None and before is not None else None
            close_all()
        results[f"concurrent_{args.concurrent}"] = {
            **stats(samples), "clients": args.clients,
            "workers": f"{args.workers}x{args.threads}" if args.clients == "workers" else None,
            "cpu_p50_ms": pct(cpus, 50), "cpu_mean_ms": round(sum(cpus) / len(cpus) * 1000, 2) if cpus else None,
            "pg_cpu_mean_ms": round(pg_cpu / len(samples) * 1000, 2) if pg_cpu else None,
            "rounds_p50_max_ms": per_round, "warmup_rounds": warmups, "load_avg": os.getloadavg()[0],
            # Each round's opens over its wall time (release to the last open's return).
            "opens_per_s": round(len(samples) / sum(m for _, m in per_round) * 1000, 1) if per_round else None}
        if workers:
            workers.stop()
            workers = None

        # Cold starts: the pool is empty.
        set_target(template, 0)
        load = os.getloadavg()[0]
        samples = [timed_open(*pair) for pair in pairs[: args.cold]]
        results["cold_start"] = {**stats(samples), "load_avg": round(load, 2)}
        close_all()

        # A burst against a small pool, refilled as the worker would.
        if args.burst:
            fill(template, args.burst_target)
            refiller = _refiller_start(template)
            timeline, watching = [], threading.Event()

            def watch():  # starts in flight every 0.5 s: shows whether the engine was kept busy
                while not watching.wait(0.5):
                    timeline.append(Container.objects.filter(template=template,
                                                             state=Container.State.PROVISIONING).count())
                connections.close_all()

            watcher = threading.Thread(target=watch, daemon=True)
            load, started, cpu = os.getloadavg()[0], time.perf_counter(), time.process_time()
            watcher.start()
            samples, errors = run_parallel(pairs[: args.burst], args.processes)
            wall, cpu = time.perf_counter() - started, time.process_time() - cpu
            watching.set()
            watcher.join()
            _refiller_stop(refiller)
            results[f"burst_{args.burst}_target_{args.burst_target}"] = {
                **stats(samples), "succeeded": len(samples), "failed": len(errors), "errors": errors[:3],
                "wall_s": round(wall, 2), "load_avg": round(load, 2), "opener_cpu_s": round(cpu, 2),
                "sorted_s": [round(t, 2) for t in sorted(t for t, _ in samples)], "provisioning_every_0_5_s": timeline}
            close_all()

        # A ramp against the pool that follows demand.
        if args.ramp:
            results[f"ramp_{args.ramp}_in_{args.ramp_seconds:g}_s"] = run_ramp(
                template, pairs[: args.ramp], seconds=args.ramp_seconds, tick_s=args.ramp_tick,
                minimum=args.ramp_min, maximum=args.ramp_max)
            close_all()
    finally:
        if workers:
            workers.stop()
        try:  # the refill nudges this run published: no worker serves the bench's instance
            from config.celery import app as celery_app

            celery_app.control.purge()
        except Exception as exc:
            print(f"could not purge the bench's task queue: {exc}", file=sys.stderr)
        close_all()
        if gateway:  # after the sessions are closed: their routes go with them
            gateway.stop()
        set_target(template, 0)
        runtime = DockerRuntime(settings.DOCKER_HOST, node_name="claimbench")
        for c in runtime.list(instance=settings.HEARTH_INSTANCE):
            runtime.remove(c.engine_id)
        Container.objects.filter(template=template, state__in=Container.ACTIVE_STATES).update(
            state=Container.State.REMOVED)
        storage.slot_root_release()
        Node.objects.exclude(pk=node.pk).update(enabled=True)

    results["load_avg_after"] = os.getloadavg()[0]
    print(json.dumps(results))
    targets = {"sequential_warm": ("p50 ≤ 10 ms", lambda r: r["p50_ms"] <= 10),
               f"concurrent_{args.concurrent}": ("p50 ≤ 30 ms, p99 ≤ 100 ms",
                                                 lambda r: r["p50_ms"] <= 30 and r["p99_ms"] <= 100),
               "cold_start": ("p50 ≤ 1000 ms", lambda r: r["p50_ms"] <= 1000),
               f"burst_{args.burst}_target_{args.burst_target}": ("all succeed, p99 ≤ 2000 ms",
                                                                  lambda r: r["failed"] == 0 and r["p99_ms"] <= 2000),
               f"ramp_{args.ramp}_in_{args.ramp_seconds:g}_s": ("all succeed, p99 ≤ 1000 ms",
                                                                lambda r: r["failed"] == 0 and r["p99_ms"] <= 1000)}
    print(f"\n{'scenario':<26}{'n':>5}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}{'hit rate':>10}"
          f"  target")
    for name, (label, check) in targets.items():
        r = results.get(name)
        if not r or not r["n"]:
            continue  # not run (--only)
        verdict = "met" if check(r) else "MISSED"
        print(f"{name:<26}{r['n']:>5}{r['p50_ms']:>10}{r['p95_ms']:>10}{r['p99_ms']:>10}{r['max_ms']:>10}"
              f"{r['hit_rate']:>10}  {label}: {verdict}")


if __name__ == "__main__":
    main()
