"""The simulator's reality check: one script of opens, replayed on real Docker and PostgreSQL and in the simulator.

    DATABASE_URL=postgres://... .venv/bin/python bench/simulate_replay.py [--opens 40] [--compress 120]
                                                 [--warm 1] [--seed 1] [--calibrate 8]
                                                 [--refresh-from bench-output.json]

The script comes from the simulator's own generator (`workspaces.simulation.population`): the densest run of
`--opens` first opens (one per user) of a weekday of 5,000 users, with their inter-arrival gaps and working times
divided by `--compress` (120: two hours in a minute), each session closed at the end of its work. Both sides run it
against a pool of exactly `--warm` containers (min = max: the fixed target main's pool_fill keeps) refilled as the
Celery worker does (bench/claim.py's refiller: pool_fill again as soon as it returns, 0.05 s apart):
  real      — each open is `workspaces.services.workspace_open` at its time on a thread of its own (a warm claim, or
              a cold start in a provisioning slot), the tiny image, bench/claim.py's node, template and tenant;
  simulated — `workspaces.simulation.engine` with the same opens, the `tiny` runtime profile (or what
              `--refresh-from` measured), the refill delay set to the refiller's 0.05 s.
`--calibrate` (8) measures the runtime (8 warm opens, 8 cold opens one after another, then 8 at once: the CPU per
start that fits the burst) just before and again just after the replay (the shared engine's speed
changes with other work); the simulation runs with each. Prints one JSON line (p50/p95/p99 and the cold-start rate
of each side, whether each percentile agrees with either simulation within the tolerance: within 2× or ±200 ms,
whichever is wider; a run is `valid` when no open failed and the lone cold start changed less than 2× between the
two calibrations), then a table. Containers carry the instance label
`<HEARTH_INSTANCE>-claimbench` and are removed at the end. Needs root (mounts) and dockerd.
"""
import argparse
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import claim  # noqa: I001 (sets up Django with bench/claim.py's instance, node and template)
from django.conf import settings  # noqa: E402
from django.db import connections  # noqa: E402

from tenants.models import Plan  # noqa: E402
from workspaces import services, storage  # noqa: E402
from workspaces.models import Container, Node, Session  # noqa: E402
from workspaces.pool.demand import Bounds  # noqa: E402
from workspaces.runtime import DockerRuntime  # noqa: E402
from workspaces.simulation import policy_inputs  # noqa: E402
from workspaces.simulation.engine import simulate  # noqa: E402
from workspaces.simulation.population import DEFAULT_PLAN_MIX, Population, Visit, population_generate  # noqa: E402
from workspaces.simulation.report import pct  # noqa: E402
from workspaces.simulation.runtime import runtime_load, runtime_refresh_data  # noqa: E402

SCRIPT_USERS = 5000  # a weekday of 5,000 signed-in users: enough first opens in its busiest stretch
LEAD_IN = 60.0  # the simulated pool's first fill happens before the script starts, as the real one's
TOLERANCE_RATIO, TOLERANCE_S = 2.0, 0.2


def script(*, opens, compress, seed):
    """[(at s from the start, work s)]: the busiest stretch of a simulated weekday, one open per user, compressed."""
    plans = {plan.slug: plan for plan in Plan.objects.all()}
    population = population_generate(users=SCRIPT_USERS, days=1, mix=DEFAULT_PLAN_MIX, plans=plans, seed=seed)
    seen, visits = set(), []
    for visit in population.visits:
        if visit.user not in seen:
            seen.add(visit.user)
            visits.append(visit)
    if len(visits) < opens:
        raise SystemExit(f"--opens: the simulated day has only {len(visits)} first opens")
    # The densest window of `opens` consecutive first opens.
    start = min(range(len(visits) - opens + 1), key=lambda i: visits[i + opens - 1].at - visits[i].at)
    chosen = visits[start:start + opens]
    t0 = chosen[0].at
    return [((v.at - t0) / compress, v.work_s / compress) for v in chosen]


def replay_real(pairs, plan, template):
    """Each open at its time on its own thread; its session closed after its work. Returns [(at, wait, cold)]."""
    results, errors, t0 = [], [], time.perf_counter() + 1.0

    def one(i):
        at, work = plan[i]
        workspace, user = pairs[i]
        try:
            time.sleep(max(0.0, t0 + at - time.perf_counter()))
            started = time.perf_counter()
            opened = services.workspace_open(workspace=workspace, user=user)
            results.append((at, time.perf_counter() - started, opened.session.cold_start))
            time.sleep(max(0.0, started + work - time.perf_counter()))
            services.session_end(session=opened.session, reason=Session.EndReason.CLOSED)
        except Exception as exc:  # counted as a failure of the run
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            connections.close_all()

    refiller = claim._refiller_start(template)
    try:
        with ThreadPoolExecutor(len(plan)) as executor:
            list(executor.map(one, range(len(plan))))
    finally:
        claim._refiller_stop(refiller)
    return sorted(results), errors


def calibrate(template, pairs, *, cores):
    """bench/claim.py's sequential warm opens and cold opens (empty pool), as its JSON keys, and the CPU per start
    that fits a burst of `len(pairs)` cold opens at once: its p50 = a lone start's + CPU × (starts ÷ cores − 1), the
    simulator's contention rule, measured on the machine as it is now."""
    claim.fill(template, len(pairs))
    warm = [claim.timed_open(*pair) for pair in pairs]
    claim.close_all()
    claim.set_target(template, 0)
    cold = [claim.timed_open(*pair) for pair in pairs]
    claim.close_all()
    burst, _ = claim.run_parallel(pairs)
    claim.close_all()
    lone, together = pct([t for t, _ in cold], 50), pct([t for t, _ in burst], 50)
    stretch = len(pairs) / cores - 1
    cpu = max(0.05, (together - lone) / stretch) if together is not None and stretch > 0 else None
    data = {"sequential_warm": claim.stats(warm), "cold_start": claim.stats(cold)}
    if cpu is not None:
        data["rows"] = [{"parallel": len(pairs), "engine_cpu_ms_each": round(cpu * 1000, 1)}]
    return data


def replay_simulated(plan, *, warm, template, node, runtime, seed):
    tenant_plan = Plan.objects.filter(max_concurrent_workspaces__isnull=True).order_by("sort_order").first()
    population = Population(tenant_plans=[tenant_plan] * len(plan), user_tenants=list(range(len(plan))),
                            visits=[Visit(at=LEAD_IN + at, user=i, work_s=work, closes=True)
                                    for i, (at, work) in enumerate(plan)])
    inputs = replace(policy_inputs(template=template, runtime=runtime, bounds=Bounds(warm, warm)),
                     refill_delay_s=0.05)
    result = simulate(population=population, template=template, node=node, policy_inputs=inputs, runtime=runtime,
                      days=1, seed=seed, trace=False)
    return [(at - LEAD_IN, wait, cold) for at, wait, cold in result.waits]


def figures(samples):
    waits = [w for _, w, _ in samples]
    warm = [w for _, w, c in samples if not c]
    cold = [w for _, w, c in samples if c]
    return {"warm_p50_s": _r(pct(warm, 50)), "cold_p50_s": _r(pct(cold, 50)), "n": len(samples),
            "p50_s": _r(pct(waits, 50)), "p95_s": _r(pct(waits, 95)), "p99_s": _r(pct(waits, 99)),
            "max_s": _r(max(waits) if waits else None),
            "cold_start_rate": round(sum(1 for *_, c in samples if c) / len(samples), 3) if samples else None}


def _r(value):
    return None if value is None else round(value, 4)


def agrees(real, simulated):
    if real is None or simulated is None:
        return False
    low, high = sorted((real, simulated))
    return high - low <= TOLERANCE_S or (low > 0 and high / low <= TOLERANCE_RATIO)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--opens", type=int, default=40)
    parser.add_argument("--compress", type=float, default=120.0)
    parser.add_argument("--warm", type=int, default=1, help="the pool's fixed size (min = max)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--refresh-from", action="append", default=[], metavar="FILE")
    parser.add_argument("--calibrate", type=int, default=8,
                        help="warm and cold opens measured just before and just after the replay, as the simulated "
                             "runtime (bench/claim.py's sequential and cold scenarios); 0: the profile's figures")
    args = parser.parse_args()
    if args.opens < 2 or args.compress <= 0 or args.warm < 0:
        parser.error("--opens must be at least 2, --compress above 0 and --warm at least 0")

    plan = script(opens=args.opens, compress=args.compress, seed=args.seed)
    node, template, pairs = claim.setup(args.opens)
    # As bench/claim.py's node, "never asked" (healthy, no heartbeat to go stale): no reconciler or event follower
    # serves the bench's instance, so an earlier run's engine time-outs would otherwise keep it out for good.
    Node.objects.filter(pk=node.pk).update(failed_calls=0, last_seen_at=None)
    claim.close_all()
    profile = runtime_load("tiny", refresh_from=args.refresh_from)
    runtimes = {"before": profile}
    out = {"instance": settings.HEARTH_INSTANCE, "opens": args.opens, "compress": args.compress, "warm": args.warm,
           "script_s": round(plan[-1][0], 1)}
    try:
        if args.calibrate:
            runtimes["before"] = runtime_refresh_data(profile, calibrate(template, pairs[: args.calibrate],
                                                                         cores=profile.cores),
                                                      source=f"{args.calibrate} warm, cold and burst opens just before")
        claim.fill(template, args.warm)
        load = os.getloadavg()[0]
        real, errors = replay_real(pairs, plan, template)
        out.update(load_avg=[round(load, 2), round(os.getloadavg()[0], 2)], failed=len(errors), errors=errors[:3])
        if args.calibrate:  # the machine may have changed meanwhile (other work on the shared engine)
            try:
                runtimes["after"] = runtime_refresh_data(
                    profile, calibrate(template, pairs[: args.calibrate], cores=profile.cores),
                    source=f"{args.calibrate} warm, cold and burst opens just after")
            except Exception as exc:  # the replay's figures stand; the run is marked not valid
                errors.append(f"calibration after: {type(exc).__name__}: {exc}")
    finally:
        claim.close_all()
        claim.set_target(template, 0)
        runtime_engine = DockerRuntime(settings.DOCKER_HOST, node_name="claimbench")
        for c in runtime_engine.list(instance=settings.HEARTH_INSTANCE):
            runtime_engine.remove(c.engine_id)
        Container.objects.filter(template=template, state__in=Container.ACTIVE_STATES).update(
            state=Container.State.REMOVED)
        storage.slot_root_release()
        Node.objects.exclude(pk=node.pk).update(enabled=True)
        try:  # the refill nudges this run published: no worker serves the bench's instance
            from config.celery import app as celery_app

            celery_app.control.purge()
        except Exception as exc:
            print(f"could not purge the bench's task queue: {exc}", flush=True)
    out["real"] = figures(real)
    out["runtime"], out["simulated"] = {}, {}
    for name, runtime in runtimes.items():
        out["runtime"][name] = {"sources": list(runtime.sources), "warm_open_p50_s": _r(runtime.warm_open.quantile(50)),
                                "cold_start_p50_s": _r(runtime.cold_start.quantile(50)),
                                "cold_start_p95_s": _r(runtime.cold_start.quantile(95)),
                                "cpu_per_start_s": runtime.cpu_per_start}
        out["simulated"][name] = figures(replay_simulated(plan, warm=args.warm, template=template, node=node,
                                                          runtime=runtime, seed=args.seed))
    # Agreement with the simulation calibrated before or after (the machine's state brackets the replay).
    out["agree"] = {p: any(agrees(out["real"][p], sim[p]) for sim in out["simulated"].values())
                    for p in ("p50_s", "p95_s", "p99_s")}
    cold = [r["cold_start_p50_s"] for r in out["runtime"].values()]
    out["machine_steady"] = len(cold) < 2 or max(cold) / min(cold) <= TOLERANCE_RATIO
    out["valid"] = not errors and out["machine_steady"]
    out["tolerance"] = f"within {TOLERANCE_RATIO:g}x or ±{TOLERANCE_S * 1000:.0f} ms"
    print(json.dumps(out))
    print(f"\n{'':<18}{'n':>4}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'max ms':>10}{'warm p50':>10}"
          f"{'cold p50':>10}{'cold':>8}")
    rows = [("real", out["real"])] + [(f"simulated {name}", f) for name, f in out["simulated"].items()]
    for side, f in rows:
        print(f"{side:<18}{f['n']:>4}" + "".join(f"{(f[k] or 0) * 1000:>10.1f}" for k in (
            "p50_s", "p95_s", "p99_s", "max_s", "warm_p50_s", "cold_p50_s")) + f"{f['cold_start_rate']:>8}")
    print(f"agree ({out['tolerance']}): " + ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in out["agree"].items())
          + ("" if out["valid"] else f"; NOT A VALID RUN: {len(errors)} opens failed, lone cold start "
                                     f"{' → '.join(f'{c:.2f} s' for c in cold)} before → after"))


if __name__ == "__main__":
    main()
