"""Claim benchmark: opening a workspace from the warm pool and from an empty pool, on real Docker and PostgreSQL.

    DATABASE_URL=postgres://... .venv/bin/python bench/claim.py [--seq 30] [--concurrent 20] [--rounds 3]
                                                               [--cold 10] [--burst 50] [--burst-target 3]

Times `workspaces.services.workspace_open` (checks, the claim transaction, the storage bind mount, the session
token) as the portal and the API call it, for the tiny image:
  sequential  — one client, warm pool, one open after another;
  concurrent  — N clients at once (threads, a DB connection each; `--processes`: a process each, like web
                workers) against a warm pool of N, `rounds` times;
  cold        — empty pool (warm_target 0): every open starts a container;
  burst       — `--burst` opens at once against warm_target `--burst-target`, with a refiller process doing what
                the Celery worker does after each claim (pool_fill of the template, again as soon as it returns).
`--only burst,cold` runs only those scenarios.
Prints one JSON line, then a table. Sets up its own node, template and synthetic tenant; its containers carry
the instance label `<HEARTH_INSTANCE>-claimbench` and are removed at the end. Needs root (mounts) and dockerd.
"""
import argparse
import json
import multiprocessing
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
os.environ["HEARTH_INSTANCE"] = os.environ.get("HEARTH_INSTANCE", "hearth") + "-claimbench"
os.environ.setdefault("STORAGE_ROOT", str(ROOT / "var" / "bench-storage"))

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection, connections  # noqa: E402
from django.db.migrations.executor import MigrationExecutor  # noqa: E402

from workspaces import pool, services, storage  # noqa: E402
from workspaces.images import image_ensure  # noqa: E402
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate  # noqa: E402
from workspaces.runtime import DockerRuntime  # noqa: E402

TINY = "hearth/tiny:1"


def pct(values, p):
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round((values[lo] + (values[hi] - values[lo]) * (k - lo)) * 1000, 2)


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
                                         max_containers=500, enabled=True, draining=False))
    Node.objects.exclude(pk=node.pk).update(enabled=False)
    template, _ = WorkspaceTemplate.objects.update_or_create(
        slug="claimbench-tiny", defaults=dict(name="bench tiny", image=TINY, internal_port=8080, cpus=0.1,
                                              memory_mb=64, pids_limit=64, warm_target=0, max_containers=400,
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
    WorkspaceTemplate.objects.filter(pk=template.pk).update(warm_target=target)
    template.warm_target = target


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


def _refiller_stop(refiller):
    process, stop = refiller
    stop.set()
    process.join(timeout=120)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50)
    parser.add_argument("--burst-target", type=int, default=3)
    parser.add_argument("--processes", action="store_true", help="clients as processes instead of threads")
    parser.add_argument("--only", default="sequential,concurrent,cold,burst", help="scenarios to run, comma-separated")
    args = parser.parse_args()
    only = set(args.only.split(","))
    args.seq = args.seq if "sequential" in only else 0
    args.rounds = args.rounds if "concurrent" in only else 0
    args.cold = args.cold if "cold" in only else 0
    args.burst = args.burst if "burst" in only else 0

    node, template, pairs = setup(max(args.seq, args.concurrent, args.cold, args.burst))
    close_all()
    results = {"instance": settings.HEARTH_INSTANCE, "image": TINY, "cpus": os.cpu_count(),
               "load_avg_before": os.getloadavg()[0]}
    try:
        # Sequential warm opens.
        fill(template, args.seq)
        _cpu.clear()
        samples = [timed_open(*pair) for pair in pairs[: args.seq]]
        results["sequential_warm"] = {**stats(samples), "cpu_p50_ms": pct(_cpu, 50)}
        close_all()

        # Concurrent clients against a warm pool of the same size.
        samples = []
        for _ in range(args.rounds):
            fill(template, args.concurrent)
            got, errors = run_parallel(pairs[: args.concurrent], args.processes)
            if errors:
                raise SystemExit(f"concurrent opens failed: {errors[:3]}")
            samples += got
            close_all()
        results[f"concurrent_{args.concurrent}"] = stats(samples)

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
    finally:
        close_all()
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
                                                                  lambda r: r["failed"] == 0 and r["p99_ms"] <= 2000)}
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
