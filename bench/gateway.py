"""Gateway benchmark: HAProxy (JWT checked per request) vs direct, with wrk and a WebSocket client, in one run.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 32] [--websockets 2000]

Starts its own upstream (uvicorn, raw ASGI: 1 KB over HTTP, WebSocket echo) and its own gateway (Hearth's
rendered config, in a temp dir), prints one JSON line and a human summary.
"""
import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
BODY = b"x" * 1024


async def app(scope, receive, send):
    """The upstream: 1 KB for any GET, echo for WebSockets."""
    if scope["type"] == "http":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/plain"), (b"content-length", b"1024")]})
        await send({"type": "http.response.body", "body": BODY})
    elif scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            event = await receive()
            if event["type"] == "websocket.disconnect":
                return
            await send({"type": "websocket.send", "text": event.get("text"), "bytes": event.get("bytes")})
    elif scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=15):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def wrk(url, *, duration, connections, threads=2, headers=(), latency=False):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s"]
    for h in headers:
        cmd += ["-H", h]
    if latency:
        cmd.append("--latency")
    out = subprocess.run(cmd + [url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    result = {"rps": rps, "requests": total, "non_2xx": int(non2xx.group(1)) if non2xx else 0,
              "socket_errors": errors.group(1) if errors else ""}
    if latency:
        m = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)", out, re.M)
        result["p50_ms"] = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
        m = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)", out, re.M)
        result["p99_ms"] = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    return result


async def hold_websockets(gw_port, host, token, count):
    """Open `count` WebSockets through the gateway, echo on each, hold them, echo again; count errors."""
    import websockets

    errors, conns = [], []
    sem = asyncio.Semaphore(200)  # open in waves so the listen backlog is not the thing being measured

    async def open_one(i):
        async with sem:
            try:
                ws = await websockets.connect(f"ws://{host}/ws", host="127.0.0.1", port=gw_port, compression=None,
                                              additional_headers={"Cookie": f"hearth_gw={token}"}, open_timeout=30,
                                              ping_interval=None)
                await ws.send(f"m{i}")
                if await asyncio.wait_for(ws.recv(), 30) != f"m{i}":
                    errors.append("bad echo")
                conns.append(ws)
            except Exception as exc:  # counted, reported
                errors.append(type(exc).__name__)

    started = time.monotonic()
    await asyncio.gather(*(open_one(i) for i in range(count)))
    opened = time.monotonic() - started
    await asyncio.sleep(3)

    async def again(ws):
        try:
            await ws.send("again")
            if await asyncio.wait_for(ws.recv(), 30) != "again":
                errors.append("bad echo")
        except Exception as exc:
            errors.append(type(exc).__name__)

    await asyncio.gather(*(again(ws) for ws in list(conns)))
    held = len(conns)
    await asyncio.gather(*(ws.close() for ws in conns), return_exceptions=True)
    return {"opened": held, "errors": len(errors), "error_kinds": sorted(set(errors)), "open_seconds": round(opened, 2)}


def route_add_latency(cfg, up_addr, rounds=50):
    """route_set over the Runtime API, then the first request through it: how long until it is effective."""
    import http.client

    from workspaces.gateway import routes
    from workspaces.gateway.tokens import session_token_issue

    set_ms, effective_ms = [], []
    for i in range(rounds):
        host_key = f"rt{i}"
        token, _ = session_token_issue(tenant_slug="b", user_id=1, workspace_host_key=host_key,
                                       session_id=f"s{i}", container_id=1)
        conn = http.client.HTTPConnection("127.0.0.1", cfg.port, timeout=5)
        conn.connect()
        t0 = time.perf_counter()
        routes.route_set(host_key=host_key, session_id=f"s{i}", address=up_addr, cfg=cfg)
        t1 = time.perf_counter()
        conn.request("GET", "/", headers={"Host": f"{host_key}.localhost:{cfg.port}", "Cookie": f"hearth_gw={token}"})
        status = conn.getresponse().status
        t2 = time.perf_counter()
        conn.close()
        if status != 200:
            raise RuntimeError(f"route {host_key} not effective: {status}")
        set_ms.append((t1 - t0) * 1000)
        effective_ms.append((t2 - t0) * 1000)
    q = statistics.quantiles
    return {"route_set_p50_ms": round(statistics.median(set_ms), 3), "route_set_p99_ms": round(q(set_ms, n=100)[98], 3),
            "effective_p50_ms": round(statistics.median(effective_ms), 3),
            "effective_p99_ms": round(q(effective_ms, n=100)[98], 3)}


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--websockets", type=int, default=2000)
    parser.add_argument("--nbthread", type=int, default=None,
                        help="HAProxy threads (0: one per CPU; default: the gateway's, GATEWAY_NBTHREAD)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="paired rounds (direct, gateway, gateway without token cache, rotating order)")
    args = parser.parse_args()

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    run_dir = Path(tempfile.mkdtemp(prefix="hgwb", dir="/tmp"))
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings.base", GATEWAY_RUN_DIR=str(run_dir),
                      GATEWAY_JWT_KEYS="bench:" + "k" * 48, LOG_LEVEL="WARNING")
    import django

    django.setup()
    from workspaces.gateway import routes
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess
    from workspaces.gateway.runtime_api import RuntimeAPI
    from workspaces.gateway.tokens import session_token_issue

    up_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.gateway:app", "--port", str(up_port), "--no-access-log",
         "--log-level", "warning", "--http", "httptools", "--loop", "uvloop", "--ws", "websockets-sansio"],
        cwd=ROOT)
    threads = {} if args.nbthread is None else {"nbthread": args.nbthread}
    cfg = gateway_config(run_dir=run_dir, port=free_port(), bind_address="127.0.0.1", maxconn=8000, **threads,
                         cache_total_mb=16, cache_max_object_bytes=1024 * 1024)
    gateway = GatewayProcess(cfg, stderr=subprocess.DEVNULL)
    # The same gateway without the token cache: HMAC and every claim decoded on every request.
    strict_cfg = gateway_config(run_dir=run_dir / "strict", port=free_port(), bind_address="127.0.0.1",
                                maxconn=8000, **threads, cache_total_mb=16,
                                cache_max_object_bytes=1024 * 1024, token_cache=False)
    strict = GatewayProcess(strict_cfg, stderr=subprocess.DEVNULL)
    results = {"bench": "gateway", "connections": args.connections, "duration_s": args.duration,
               "nbthread": cfg.nbthread or os.cpu_count(), "loadavg_before": os.getloadavg()[0]}
    try:
        wait_port(up_port)
        gateway.start()
        strict.start()
        up_addr = f"127.0.0.1:{up_port}"
        routes.route_set(host_key="bench", session_id="s1", address=up_addr, cfg=cfg)
        routes.route_set(host_key="bench", session_id="s1", address=up_addr, cfg=strict_cfg)
        token, _ = session_token_issue(tenant_slug="b", user_id=1, workspace_host_key="bench", session_id="s1",
                                       container_id=1)
        host = f"bench.localhost:{cfg.port}"
        gw_headers = (f"Host: {host}", f"Cookie: hearth_gw={token}")
        direct_url, gw_url = f"http://127.0.0.1:{up_port}/", f"http://127.0.0.1:{cfg.port}/"
        strict_url = f"http://127.0.0.1:{strict_cfg.port}/"
        strict_headers = (f"Host: bench.localhost:{strict_cfg.port}", f"Cookie: hearth_gw={token}")

        # Sanity: the gateway answers 200 with the token and 401 without.
        wrk(gw_url, duration=1, connections=2, headers=gw_headers)
        worker = int(re.search(r"Pid: (\d+)", RuntimeAPI(cfg.admin_socket).command("show info")).group(1))
        strict_worker = int(re.search(r"Pid: (\d+)", RuntimeAPI(strict_cfg.admin_socket).command("show info"))
                            .group(1))
        variants = {"direct": (direct_url, (), upstream.pid), "gateway": (gw_url, gw_headers, worker),
                    "strict": (strict_url, strict_headers, strict_worker)}
        runs = {k: [] for k in variants}
        cpu = {k: [0.0, 0] for k in variants}
        ratios = {"gateway": [], "strict": []}
        # Paired rounds: each round measures all three back to back, in an order that rotates, so a change of
        # load on the shared machine hits them alike; the verdict is the median of the per-round ratios.
        order = list(variants)
        for r in range(args.rounds):
            this_round = {}
            for name in order[r % 3:] + order[:r % 3]:
                url, headers, pid = variants[name]
                before = cpu_seconds(pid)
                this_round[name] = wrk(url, duration=args.duration, connections=args.connections, headers=headers)
                cpu[name][0] += cpu_seconds(pid) - before
                cpu[name][1] += this_round[name]["requests"]
                runs[name].append(this_round[name])
            for name in ratios:
                ratios[name].append(this_round[name]["rps"] / this_round["direct"]["rps"])
        # CPU per request barely depends on what else runs on the machine, unlike req/s.
        names = {"direct": "upstream", "gateway": "gateway", "strict": "gateway_strict"}
        results["cpu_us_per_request"] = {names[k]: round(v[0] / max(v[1], 1) * 1e6, 1) for k, v in cpu.items()}
        best = {k: max(v, key=lambda r: r["rps"]) for k, v in runs.items()}
        results.update(direct_rps=best["direct"]["rps"], gateway_rps=best["gateway"]["rps"],
                       ratio=round(statistics.median(ratios["gateway"]), 3),
                       ratio_best_of=round(best["gateway"]["rps"] / best["direct"]["rps"], 3),
                       strict_rps=best["strict"]["rps"], strict_ratio=round(statistics.median(ratios["strict"]), 3),
                       gateway_non_2xx=sum(r["non_2xx"] for r in runs["gateway"] + runs["strict"]),
                       round_ratios=[round(x, 3) for x in ratios["gateway"]],
                       strict_round_ratios=[round(x, 3) for x in ratios["strict"]],
                       direct_rps_rounds=[r["rps"] for r in runs["direct"]],
                       gateway_rps_rounds=[r["rps"] for r in runs["gateway"]],
                       strict_rps_rounds=[r["rps"] for r in runs["strict"]])

        lat_direct = wrk(direct_url, duration=5, connections=1, threads=1, latency=True)
        lat_gw = wrk(gw_url, duration=5, connections=1, threads=1, headers=gw_headers, latency=True)
        lat_strict = wrk(strict_url, duration=5, connections=1, threads=1, headers=strict_headers, latency=True)
        results.update(direct_p50_ms=lat_direct["p50_ms"], gateway_p50_ms=lat_gw["p50_ms"],
                       added_p50_ms=round(lat_gw["p50_ms"] - lat_direct["p50_ms"], 3),
                       strict_added_p50_ms=round(lat_strict["p50_ms"] - lat_direct["p50_ms"], 3),
                       direct_p99_ms=lat_direct["p99_ms"], gateway_p99_ms=lat_gw["p99_ms"])

        results["route_add"] = route_add_latency(cfg, up_addr)

        if args.websockets:
            results["websockets"] = {"target": args.websockets,
                                     **asyncio.run(hold_websockets(cfg.port, host, token, args.websockets))}
        counters = routes.counters_read(cfg=cfg).get("s1", {})
        results["counted_requests_s1"] = counters.get("requests")
    finally:
        gateway.stop()
        strict.stop()
        upstream.terminate()
        upstream.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)

    results["loadavg_after"] = os.getloadavg()[0]
    ws = results.get("websockets", {})
    ra = results["route_add"]
    verdicts = {"throughput_ratio": results["ratio"] >= 0.5, "added_p50_ms": results["added_p50_ms"] <= 0.3,
                "route_add_ms": ra["effective_p50_ms"] <= 5}
    if ws:
        verdicts["websockets"] = ws["opened"] == ws["target"] and ws["errors"] == 0
    results["verdicts"] = {k: "met" if v else "MISSED" for k, v in verdicts.items()}
    print(json.dumps(results))
    v = results["verdicts"]
    print(
        f"\nGateway benchmark (wrk -t2 -c{args.connections}, {args.duration} s x {args.rounds} paired rounds; "
        f"HAProxy nbthread {results['nbthread']}; 2 shared cores, load average {results['loadavg_before']:.1f} "
        f"-> {results['loadavg_after']:.1f})\n"
        f"  HTTP 1 KB   through the gateway / direct, token checked on every request, median of the rounds: "
        f"{results['ratio']:.2f}x with the token cache {results['round_ratios']}, {results['strict_ratio']:.2f}x "
        f"HMAC + claims decoded every time  (target >= 0.50: {v['throughput_ratio']})\n"
        f"              best rounds: direct {results['direct_rps']:.0f} req/s, gateway {results['gateway_rps']:.0f}, "
        f"every time {results['strict_rps']:.0f}\n"
        f"  CPU/request upstream (uvicorn) {results['cpu_us_per_request']['upstream']} us; HAProxy "
        f"{results['cpu_us_per_request']['gateway']} us (token cache), "
        f"{results['cpu_us_per_request']['gateway_strict']} us (every time)\n"
        f"  unloaded    p50 direct {results['direct_p50_ms']:.3f} ms, gateway {results['gateway_p50_ms']:.3f} ms: "
        f"added {results['added_p50_ms']:.3f} ms (token cache), {results['strict_added_p50_ms']:.3f} ms (every "
        f"time)  (target <= 0.3 ms: {v['added_p50_ms']})\n"
        f"  route add   route_set p50 {ra['route_set_p50_ms']} ms / p99 {ra['route_set_p99_ms']} ms; effective "
        f"(set + first request) p50 {ra['effective_p50_ms']} ms / p99 {ra['effective_p99_ms']} ms  "
        f"(target <= 5 ms: {v['route_add_ms']})\n"
        + (f"  WebSockets  {ws['opened']}/{ws['target']} held through the gateway, {ws['errors']} errors "
           f"{ws['error_kinds'] or ''} (opened in {ws['open_seconds']} s)  (target 2,000: {v['websockets']})\n"
           if ws else "")
    )

if __name__ == "__main__":
    main()
