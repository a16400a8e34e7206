"""Where a cold start's time goes on this engine (slot, create, start, port, first page), alone and in parallel.

    .venv/bin/python bench/cold_phases.py [--parallel 1,10,20,50] [--variant default ...] [--repeat 1]

Each variant is the hardened spec of `workspaces.runtime.DockerRuntime` with one thing changed:
  default    — what the runtime does today (bridge with ICC off, --init, json-file logs);
  noinit     — without docker-init as PID 1;
  lognone    — log driver `none`; loglocal — log driver `local`;
  netnone    — `--network none` (not usable: the host cannot reach it; shows what the network costs);
  internal   — an `internal` bridge (no masquerade / outbound rules);
  docker0    — the engine's default bridge (no embedded DNS resolver; isolation only with dockerd --icc=false);
  crun       — runtime `crun` (register it: /etc/docker/daemon.json {"runtimes": {"crun": {"path": "/usr/bin/crun"}}}
               and SIGHUP dockerd; crun 1.8 refuses cgroup v1 hybrid mode unless the hugetlb hierarchy is mounted);
  lean       — noinit + lognone (+ crun with --lean-crun).
`--parallel N` starts N containers at once (threads), like N cold opens or an N-wide refill; `--precreate` creates
them first and times only start -> ready (a created-not-started reserve). `--stream 6,12 --total 47` starts 47 with
at most 6 (then 12) in flight and reports when the k-th is ready.
Each row has the engine's CPU per start (dockerd, containerd, and the container's shim with the runc and hook
processes it reaped, from /proc; dockerd's share includes any other client's work on the engine meanwhile).
Prints one JSON line, then a table (p50/max per phase in ms, containers/s, load average, CPU per start).
Containers carry `hearth.instance=<HEARTH_INSTANCE>-phases` and are removed at the end.
"""

import argparse
import json
import os
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from stats import pct as _pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
os.environ["HEARTH_INSTANCE"] = os.environ.get("HEARTH_INSTANCE", "hearth") + "-phases"
os.environ.setdefault("STORAGE_ROOT", str(Path(__file__).resolve().parent.parent / "var" / "bench-storage"))

import django  # noqa: E402

django.setup()

import docker  # noqa: E402
from django.conf import settings  # noqa: E402
from docker.types import LogConfig, Mount  # noqa: E402

from workspaces import storage  # noqa: E402
from workspaces.images import image_ensure  # noqa: E402
from workspaces.runtime import DockerRuntime  # noqa: E402
from workspaces.runtime.docker import DEFAULT_TMPFS, LOG_CONFIG, WORKSPACE_USER  # noqa: E402

TINY = "hearth/tiny:1"
INSTANCE = settings.HEARTH_INSTANCE
PHASES = ("slot", "create", "start", "inspect", "port", "page", "total")


def pct(values, p):
    return _pct(values, p, scale=1000, digits=1)


def options(variant, runtime, lean_crun):
    opts = {"init": True, "log": LOG_CONFIG, "network": runtime.ensure_network(), "runtime": None}
    if variant in ("noinit", "lean"):
        opts["init"] = False
    if variant in ("lognone", "lean"):
        opts["log"] = LogConfig(type="none")
    if variant == "loglocal":
        opts["log"] = LogConfig(type="local", config={"max-size": "1m", "max-file": "2"})
    if variant == "netnone":
        opts["network"] = "none"
    if variant == "docker0":  # the default bridge: no embedded DNS (but ICC as the daemon says)
        opts["network"] = "bridge"
    if variant == "internal":
        opts["network"] = internal_network(runtime)
    if variant == "crun" or (variant == "lean" and lean_crun):
        opts["runtime"] = "crun"
    return opts


_internal = {}


def internal_network(runtime):
    if "id" not in _internal:
        name = f"hearth-{INSTANCE}-internal"
        found = runtime.api.networks(names=[name])
        if found:
            _internal["id"] = found[0]["Id"]
        else:
            _internal["id"] = runtime.api.create_network(
                name,
                driver="bridge",
                internal=True,
                options={"com.docker.network.bridge.enable_icc": "false"},
                labels={"hearth.instance": INSTANCE},
            )["Id"]
    return _internal["id"]


def create_one(runtime, opts, made):
    times = {}
    t0 = time.perf_counter()
    key = f"p{uuid.uuid4().hex[:10]}"
    slot = storage.slot_create(key)
    t1 = time.perf_counter()
    times["slot"] = t1 - t0
    api = runtime.api
    host_config = api.create_host_config(
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        read_only=True,
        tmpfs=dict(DEFAULT_TMPFS),
        mem_limit="64m",
        memswap_limit="64m",
        nano_cpus=int(0.1e9),
        pids_limit=64,
        mounts=[Mount(target="/home/coder", source=str(slot), type="bind", propagation="rslave")],
        network_mode=opts["network"],
        restart_policy={"Name": "no"},
        init=opts["init"],
        ipc_mode="private",
        log_config=opts["log"],
        runtime=opts["runtime"],
    )
    cid = api.create_container(
        TINY,
        name=f"hearth-{INSTANCE}-{key}",
        user=WORKSPACE_USER,
        labels={"hearth.instance": INSTANCE, "hearth.port": "8080"},
        host_config=host_config,
        detach=True,
    )["Id"]
    made.append((cid, slot))
    times["create"] = time.perf_counter() - t1
    return cid, times


def start_one(runtime, cid, times):
    api = runtime.api
    t2 = time.perf_counter()
    api.start(cid)
    t3 = time.perf_counter()
    times["start"] = t3 - t2
    container = runtime._from_inspect(api.inspect_container(cid))
    t4 = time.perf_counter()
    times["inspect"] = t4 - t3
    if container.address:
        if not runtime.wait_ready(container, timeout=60):
            raise RuntimeError(f"{cid[:12]} never answered")
        t5 = time.perf_counter()
        times["port"] = t5 - t4
        runtime.wait_ready(container, timeout=60, path="/")
        times["page"] = time.perf_counter() - t5
    times["total"] = sum(times.values())
    return times


def _proc_cpu(pid):
    """utime+stime+cutime+cstime of a process in seconds (children it reaped count: runc under its shim)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _pids(pattern):
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if pattern(cmd):
                found.append(int(entry))
    return found


def engine_cpu():
    """CPU seconds used so far by dockerd and by containerd (the engine's share of a start, excluding shims)."""
    dockerd = sum(_proc_cpu(pid) for pid in _pids(lambda c: c.startswith(("dockerd", "/usr/sbin/dockerd"))))
    containerd = sum(_proc_cpu(pid) for pid in _pids(lambda c: c.startswith(("containerd ", "/usr/bin/containerd "))))
    return dockerd, containerd


def shims_cpu(ids):
    ids = {i[:64] for i in ids}
    return sum(_proc_cpu(pid) for pid in _pids(lambda c: "containerd-shim" in c and any(i in c for i in ids)))


def run(runtime, variant, n, lean_crun, precreate=False):
    """n cold starts at once; with `precreate`, the containers are created first and only started at once."""
    opts = options(variant, runtime, lean_crun)
    made, barrier, created = [], threading.Barrier(n), {}
    if precreate:
        before = sum(engine_cpu())
        with ThreadPoolExecutor(4) as executor:
            for cid, times in executor.map(lambda _: create_one(runtime, opts, made), range(n)):
                created[cid] = times
        create_cpu = sum(engine_cpu()) - before

    def client(i):
        if precreate:
            cid = made[i][0]
            barrier.wait()
            return start_one(runtime, cid, {})
        barrier.wait()
        return start_one(runtime, *create_one(runtime, opts, made))

    load = os.getloadavg()[0]
    engine_before = engine_cpu()
    cpu = time.process_time()
    started = time.perf_counter()
    with ThreadPoolExecutor(n) as executor:
        results = list(executor.map(client, range(n)))
    wall = time.perf_counter() - started
    dockerd, containerd = (after - before for after, before in zip(engine_cpu(), engine_before, strict=True))
    shims = shims_cpu([m[0] for m in made])
    row = {
        "engine_cpu_ms_each": round((dockerd + containerd + shims) / n * 1000, 1),
        "cpu_ms_each": {
            "dockerd": round(dockerd / n * 1000, 1),
            "containerd": round(containerd / n * 1000, 1),
            "shim_runc_hooks": round(shims / n * 1000, 1),
        },
        "precreated": precreate,
        "precreate_cpu_ms_each": round(create_cpu / n * 1000, 1) if precreate else None,
        "variant": variant,
        "parallel": n,
        "wall_s": round(wall, 2),
        "per_s": round(n / wall, 2),
        "load_avg": round(load, 2),
        "client_cpu_ms_each": round((time.process_time() - cpu) / n * 1000, 1),
    }
    for phase in PHASES:
        values = [r[phase] for r in results if phase in r]
        row[phase] = {"p50": pct(values, 50), "p95": pct(values, 95), "max": pct(values, 100)}
    remove_started = time.perf_counter()
    with ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda m: runtime.remove(m[0]), made))
    for _, slot in made:
        storage.slot_remove(slot)
    row["remove_s"] = round(time.perf_counter() - remove_started, 2)
    return row


def stream(runtime, variant, total, concurrency, lean_crun):
    """`total` cold starts with at most `concurrency` in flight: when is the k-th container ready after t0?"""
    opts = options(variant, runtime, lean_crun)
    made, ready_at = [], []
    load = os.getloadavg()[0]
    before = sum(engine_cpu())
    t0 = time.perf_counter()

    def worker(_):
        start_one(runtime, *create_one(runtime, opts, made))
        ready_at.append(time.perf_counter() - t0)

    with ThreadPoolExecutor(concurrency) as executor:
        list(executor.map(worker, range(total)))
    wall = time.perf_counter() - t0
    engine = sum(engine_cpu()) - before + shims_cpu([m[0] for m in made])
    row = {"variant": variant, "total": total, "concurrency": concurrency, "wall_s": round(wall, 2),
           "per_s": round(total / wall, 2), "load_avg": round(load, 2),
           "engine_cpu_ms_each": round(engine / total * 1000, 1),
           "ready_p50_ms": pct(ready_at, 50), "ready_p99_ms": pct(ready_at, 99)}
    with ThreadPoolExecutor(8) as executor:
        list(executor.map(lambda m: runtime.remove(m[0]), made))
    for _, slot in made:
        storage.slot_remove(slot)
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parallel", default="1,10,20,50")
    parser.add_argument("--variant", nargs="+", default=["default"])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--lean-crun", action="store_true")
    parser.add_argument("--precreate", action="store_true", help="create first, then time only start -> ready")
    parser.add_argument("--stream", default="", help="concurrency levels for a stream of --total starts, e.g. 1,2,4,8")
    parser.add_argument("--total", type=int, default=24)
    args = parser.parse_args()
    image_ensure(TINY)
    runtime = DockerRuntime(settings.DOCKER_HOST, node_name="phases")
    rows = []
    if args.stream:
        try:
            for variant in args.variant:
                for c in [int(x) for x in args.stream.split(",")]:
                    row = stream(runtime, variant, args.total, c, args.lean_crun)
                    rows.append(row)
                    print(json.dumps(row), file=sys.stderr)
        finally:
            for c in runtime.list(instance=INSTANCE):
                runtime.remove(c.engine_id)
        print(json.dumps({"image": TINY, "cpus": os.cpu_count(), "stream": rows}))
        return
    try:
        for variant in args.variant:
            for n in [int(x) for x in args.parallel.split(",")]:
                for _ in range(args.repeat):
                    if n == 1:  # alone: five one-at-a-time starts, so the percentiles mean something
                        singles = [run(runtime, variant, 1, args.lean_crun, args.precreate) for _ in range(5)]
                        row = singles[-1]
                        for phase in PHASES:
                            values = sorted(s[phase]["p50"] for s in singles if s[phase]["p50"] is not None)
                            if values:
                                row[phase] = {"p50": values[2], "p95": values[-1], "max": values[-1]}
                    else:
                        row = run(runtime, variant, n, args.lean_crun, args.precreate)
                    rows.append(row)
                    print(
                        f"{variant:<9} x{n:<3} wall {row['wall_s']:>6}s {row['per_s']:>6}/s load {row['load_avg']:>5} "
                        f"engine cpu {row['engine_cpu_ms_each']} ms each {row['cpu_ms_each']} "
                        + " ".join(f"{p} {row[p]['p50']}/{row[p]['max']}" for p in PHASES),
                        file=sys.stderr,
                    )
    finally:
        for c in runtime.list(instance=INSTANCE):
            runtime.remove(c.engine_id)
        if "id" in _internal:
            try:
                runtime.api.remove_network(_internal["id"])
            except docker.errors.APIError:
                pass
    print(json.dumps({"image": TINY, "cpus": os.cpu_count(), "rows": rows}))
    print(
        f"\n{'variant':<10}{'n':>4}{'wall s':>8}{'/s':>7}{'load':>6}{'cpu ms':>8}  "
        + "".join(f"{p + ' p50/max':>18}" for p in PHASES)
    )
    for r in rows:
        print(
            f"{r['variant']:<10}{r['parallel']:>4}{r['wall_s']:>8}{r['per_s']:>7}{r['load_avg']:>6}"
            f"{r['engine_cpu_ms_each']:>8}  "
            + "".join(f"{str(r[p]['p50']) + '/' + str(r[p]['max']):>18}" for p in PHASES)
        )


if __name__ == "__main__":
    main()
