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
    parser.add_argument("--nbthread", type=int, default=0, help="HAProxy threads (0: one per CPU)")
    parser.add_argument("--rounds", type=int, default=2, help="alternating direct/gateway wrk rounds; best kept")
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
    cfg = gateway_config(run_dir=run_dir, port=free_port(), bind_address="127.0.0.1", maxconn=8000,
                         nbthread=args.nbthread,
                         cache_total_mb=16, cache_max_object_bytes=1024 * 1024)
    gateway = GatewayProcess(cfg, stderr=subprocess.DEVNULL)
    # The same gateway without the token cache: HMAC and every claim decoded on every request.
    strict_cfg = gateway_config(run_dir=run_dir / "strict", port=free_port(), bind_address="127.0.0.1",
                                maxconn=8000, nbthread=args.nbthread, cache_total_mb=16,
                                cache_max_object_bytes=1024 * 1024, token_cache=False)
    strict = GatewayProcess(strict_cfg, stderr=subprocess.DEVNULL)
    results = {"bench": "gateway", "connections": args.connections, "duration_s": args.duration,
               "nbthread": args.nbthread or os.cpu_count(), "loadavg_before": os.getloadavg()[0]}
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
        direct, through, strict_runs = [], [], []
        worker = int(re.search(r"Pid: (\d+)", RuntimeAPI(cfg.admin_socket).command("show info")).group(1))
        strict_worker = int(re.search(r"Pid: (\d+)", RuntimeAPI(strict_cfg.admin_socket).command("show info"))
                            .group(1))
        cpu = {"upstream": [0.0, 0], "gateway": [0.0, 0], "gateway_strict": [0.0, 0]}
        for _ in range(args.rounds):
            before = cpu_seconds(upstream.pid)
            direct.append(wrk(direct_url, duration=args.duration, connections=args.connections))
            cpu["upstream"][0] += cpu_seconds(upstream.pid) - before
            cpu["upstream"][1] += direct[-1]["requests"]
            before = cpu_seconds(worker)
            through.append(wrk(gw_url, duration=args.duration, connections=args.connections, headers=gw_headers))
            cpu["gateway"][0] += cpu_seconds(worker) - before
            cpu["gateway"][1] += through[-1]["requests"]
            before = cpu_seconds(strict_worker)
            strict_runs.append(wrk(strict_url, duration=args.duration, connections=args.connections,
                                   headers=strict_headers))
            cpu["gateway_strict"][0] += cpu_seconds(strict_worker) - before
            cpu["gateway_strict"][1] += strict_runs[-1]["requests"]
        # CPU per request barely depends on what else runs on the machine, unlike req/s.
        results["cpu_us_per_request"] = {k: round(v[0] / max(v[1], 1) * 1e6, 1) for k, v in cpu.items()}
        best_direct = max(direct, key=lambda r: r["rps"])
        best_gw = max(through, key=lambda r: r["rps"])
        best_strict = max(strict_runs, key=lambda r: r["rps"])
        results.update(direct_rps=best_direct["rps"], gateway_rps=best_gw["rps"],
                       ratio=round(best_gw["rps"] / best_direct["rps"], 3),
                       strict_rps=best_strict["rps"], strict_ratio=round(best_strict["rps"] / best_direct["rps"], 3),
                       gateway_non_2xx=sum(r["non_2xx"] for r in through + strict_runs),
                       direct_rps_rounds=[r["rps"] for r in direct], gateway_rps_rounds=[r["rps"] for r in through],
                       strict_rps_rounds=[r["rps"] for r in strict_runs])

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

    print(json.dumps(results))
    ws = results.get("websockets", {})
    ra = results["route_add"]
    print(
        f"\nGateway benchmark (wrk -c{args.connections}, {args.duration}s, best of {args.rounds}; 2 shared cores, "
        f"load average {results['loadavg_before']:.1f} at start)\n"
        f"  HTTP 1 KB   direct {results['direct_rps']:>9.0f} req/s; through the gateway, token checked on every "
        f"request: {results['gateway_rps']:>7.0f} req/s = {results['ratio']:.2f}x (token cache), "
        f"{results['strict_rps']:>7.0f} req/s = {results['strict_ratio']:.2f}x (HMAC + claims decoded every "
        f"time)  (target >= 0.50)\n"
        f"  CPU/request upstream (uvicorn) {results['cpu_us_per_request']['upstream']} us; HAProxy "
        f"{results['cpu_us_per_request']['gateway']} us (token cache), "
        f"{results['cpu_us_per_request']['gateway_strict']} us (every time)\n"
        f"  unloaded    p50 direct {results['direct_p50_ms']:.3f} ms, gateway {results['gateway_p50_ms']:.3f} ms: "
        f"added {results['added_p50_ms']:.3f} ms (token cache), {results['strict_added_p50_ms']:.3f} ms (every "
        f"time)  (target <= 0.3 ms)\n"
        f"  route add   route_set p50 {ra['route_set_p50_ms']} ms / p99 {ra['route_set_p99_ms']} ms; effective "
        f"(set + first request) p50 {ra['effective_p50_ms']} ms / p99 {ra['effective_p99_ms']} ms  (target <= 5 ms)\n"
        + (f"  WebSockets  {ws['opened']}/{ws['target']} held through the gateway, {ws['errors']} errors "
           f"{ws['error_kinds'] or ''} (opened in {ws['open_seconds']} s)\n" if ws else "")
    )


if __name__ == "__main__":
    main()
