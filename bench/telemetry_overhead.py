"""Telemetry's cost on the claim path (issue 15): bench/claim.py with traces off and on, interleaved.

    DATABASE_URL=postgres://... .venv/bin/python bench/telemetry_overhead.py [--pairs 3] [--seq 30] [--concurrent 20]
                                                                            [--rounds 3]

Each pair runs bench/claim.py (sequential and concurrent warm opens, its real gateway) once with telemetry off (no
OTEL_* variable) and once on (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: an OTLP/HTTP receiver in this process, on loopback,
decoding every span as a collector would), alternating which arm goes first; each open is one trace (a `bench.open`
span stands for the web request's). Throughput is opens per second: one
client's opens over their summed latency (sequential), and each concurrent round's opens over its wall time. The
ratio on/off of each pair, then the median over the pairs, is the figure; the target is ≥ 0.95 (within 5 %). Prints
one JSON line, then a table. The machine is shared: the median of interleaved pairs, not one run, says it.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.otlp_receiver import OtlpReceiver  # noqa: E402

METRICS = (("sequential_warm", "opens_per_s"), ("concurrent", "opens_per_s"),
           ("sequential_warm", "process_cpu_mean_ms"), ("concurrent", "cpu_mean_ms"))


def run_claim(args, endpoint):
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    if endpoint:
        env["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"] = endpoint
        if args.sample is not None:  # the SDK's own sampler: a share of the opens' traces, the rest non-recording
            env.update(OTEL_TRACES_SAMPLER="parentbased_traceidratio", OTEL_TRACES_SAMPLER_ARG=str(args.sample))
    argv = [sys.executable, str(ROOT / "bench" / "claim.py"), "--only", args.only, "--seq",
            str(args.seq), "--concurrent", str(args.concurrent), "--rounds", str(args.rounds)]
    for attempt in range(3):  # a shared engine sometimes times out filling the pool: that run says nothing
        result = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if result.returncode == 0:
            break
        print(f"bench/claim.py failed (attempt {attempt + 1}): {result.stderr.strip().splitlines()[-1:]}",
              file=sys.stderr)
    else:
        raise SystemExit(f"bench/claim.py failed:\n{result.stderr[-3000:]}")
    line = next(line for line in result.stdout.splitlines() if line.startswith("{"))
    got = json.loads(line)
    if got["telemetry"] != bool(endpoint):
        raise SystemExit(f"bench/claim.py ran with telemetry {got['telemetry']}, wanted {bool(endpoint)}")
    concurrent = next((v for k, v in got.items() if k.startswith("concurrent_") and v.get("n")), None)
    return {"sequential_warm": got.get("sequential_warm"), "concurrent": concurrent}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--seq", type=int, default=30)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", default="sequential,concurrent", help="bench/claim.py's scenarios")
    parser.add_argument("--sample", type=float, default=None,
                        help="trace this share of the opens (OTEL_TRACES_SAMPLER=parentbased_traceidratio); "
                             "default: every one (the SDK's default sampler)")
    args = parser.parse_args()

    receiver = OtlpReceiver()
    pairs = []
    try:
        for i in range(args.pairs):
            order = ("off", "on") if i % 2 == 0 else ("on", "off")
            runs = {arm: run_claim(args, receiver.endpoint if arm == "on" else None) for arm in order}
            pairs.append(runs)
            print(f"pair {i + 1}/{args.pairs} ({' then '.join(order)}): " + ", ".join(
                f"{s} {m} off {runs['off'][s][m]} on {runs['on'][s][m]}" for s, m in METRICS if runs["off"][s]),
                file=sys.stderr)
    finally:
        receiver.close()

    ratios = {f"{s}.{m}": [round(p["on"][s][m] / p["off"][s][m], 3) for p in pairs]
              for s, m in METRICS if pairs[0]["off"][s]}
    result = {"pairs": args.pairs, "sample": args.sample, "seq": args.seq, "concurrent": args.concurrent,
              "rounds": args.rounds, "spans_received": len(receiver.spans), "ratio_on_off": ratios,
              "median_ratio_on_off": {k: round(statistics.median(v), 3) for k, v in ratios.items()},
              "runs": pairs}
    print(json.dumps(result))
    print(f"\n{'figure (on / off)':<34}{'median':>8}  per pair{'':<14}target")
    for key in ratios:
        target = "≥ 0.95 (within 5 %)" if key.endswith("opens_per_s") else "(CPU per open: lower is better)"
        print(f"{key:<34}{result['median_ratio_on_off'][key]:>8}  {str(ratios[key]):<22}{target}")


if __name__ == "__main__":
    main()
