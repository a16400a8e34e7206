"""The CPU telemetry adds to one traced warm open (issue 15), in µs: on − off, in one process.

    DATABASE_URL=postgres://... .venv/bin/python bench/telemetry_cpu.py [--blocks 5] [--opens 20]

bench/claim.py's setup (its node, template, synthetic tenant and own HAProxy gateway), then blocks of `--opens`
sequential warm opens, alternating telemetry off and on (set up and torn down in this process, a fresh database
connection each block), after one unmeasured block of each. On, every span goes to an OTLP/HTTP receiver in another
process, and the batch processor exports only when the block is over, in this thread (OTEL_BSP_SCHEDULE_DELAY is
raised), so the export's CPU is measured with the opens': the figure is the opening thread's added CPU per open
(median over the opens) plus the export's per open (median over the blocks). Unlike bench/telemetry_overhead.py's
ratio, it does not shrink as the open gets faster. Prints one JSON line. Needs root and dockerd, as bench/claim.py.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench"), str(ROOT)]
for _name in [name for name in os.environ if name.startswith("OTEL_")]:
    del os.environ[_name]  # off unless this script turns it on

import claim  # noqa: E402  (sets up Django, and telemetry off)
from django.db import connections  # noqa: E402

from core import telemetry  # noqa: E402

_RECEIVER = """
import sys, time
from tests.otlp_receiver import OtlpReceiver
receiver = OtlpReceiver()
print(receiver.endpoint, flush=True)
while sys.stdin.readline():
    print(len(receiver.spans), flush=True)
"""


def switch(on: bool, endpoint: str) -> None:
    telemetry.telemetry_shutdown()
    connections.close_all()  # the next connection is instrumented (or not) from its start, as in a web process
    if on:
        os.environ.update(OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=endpoint, OTEL_BSP_SCHEDULE_DELAY="100000000")
    else:
        for name in ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_BSP_SCHEDULE_DELAY"):
            os.environ.pop(name, None)
    if telemetry.telemetry_setup(process="bench") != on:
        raise SystemExit(f"telemetry did not turn {'on' if on else 'off'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--blocks", type=int, default=5, help="measured blocks of each arm")
    parser.add_argument("--opens", type=int, default=20, help="warm opens per block")
    args = parser.parse_args()

    receiver = subprocess.Popen([sys.executable, "-c", _RECEIVER], cwd=ROOT, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base"})
    endpoint = receiver.stdout.readline().strip()
    node, template, pairs = claim.setup(args.opens)
    claim.close_all()
    gateway = claim.start_gateway()
    import gc

    gc.freeze()  # as config/wsgi.py does in each web worker
    got = {"off": {"thread": [], "export": []}, "on": {"thread": [], "export": [], "spans": []}}
    try:
        for block in range(-2, 2 * args.blocks):
            on = block % 2 == (0 if (block // 2) % 2 else 1)  # each pair of blocks swaps which arm goes first
            switch(on, endpoint)
            claim.fill(template, args.opens)
            receiver.stdin.write("\n")
            receiver.stdin.flush()
            spans_before = int(receiver.stdout.readline())
            claim._cpu.clear()
            for pair in pairs[: args.opens]:
                claim.timed_open(*pair)
            flushed = time.thread_time()
            telemetry.flush()
            flushed = time.thread_time() - flushed
            claim.close_all()
            if block < 0:
                continue
            arm = got["on" if on else "off"]
            arm["thread"] += claim._cpu
            arm["export"].append(flushed / args.opens)
            if on:
                time.sleep(0.2)
                receiver.stdin.write("\n")
                receiver.stdin.flush()
                arm["spans"].append((int(receiver.stdout.readline()) - spans_before) / args.opens)
    finally:
        telemetry.telemetry_shutdown()
        claim.close_all()
        if gateway:
            gateway.stop()
        claim.set_target(template, 0)
        runtime = claim.DockerRuntime(claim.settings.DOCKER_HOST, node_name="claimbench")
        for c in runtime.list(instance=claim.settings.HEARTH_INSTANCE):
            runtime.remove(c.engine_id)
        claim.Container.objects.filter(template=template, state__in=claim.Container.ACTIVE_STATES).update(
            state=claim.Container.State.REMOVED)
        claim.storage.slot_root_release()
        claim.Node.objects.exclude(pk=node.pk).update(enabled=True)
        receiver.stdin.close()
        receiver.wait(timeout=10)

    def us(seconds):
        return round(seconds * 1e6)

    thread = {arm: statistics.median(got[arm]["thread"]) for arm in ("off", "on")}
    export = statistics.median(got["on"]["export"])
    result = {"blocks": args.blocks, "opens": args.opens, "load_avg": os.getloadavg(),
              "spans_per_open": round(statistics.mean(got["on"]["spans"]), 2),
              "thread_cpu_per_open_us": {arm: us(value) for arm, value in thread.items()},
              "added_thread_us": us(thread["on"] - thread["off"]),
              "export_per_open_us_by_block": [us(x) for x in got["on"]["export"]],
              "added_per_open_us": us(thread["on"] - thread["off"] + export)}
    print(json.dumps(result))
    print(f"\nadded CPU per traced open: {result['added_per_open_us']} µs (opening thread "
          f"{result['added_thread_us']} + export {us(export)}), {result['spans_per_open']} spans; target ≤ 250 µs")


if __name__ == "__main__":
    main()
