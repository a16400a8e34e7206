"""Static assets through the gateway: an 11.4 MB workbench.js, gzipped on the fly upstream vs HAProxy's cache.

    .venv/bin/python bench/gateway_static.py [--repeat 5]

The upstream stands in for code-server: it gzips each response on the fly (zlib level 6, like Node's default)
when the client accepts gzip, and sends `Cache-Control: public, max-age=31536000`. The body is 11.4 MB of
Python source text from the virtualenv (compresses about 4x, like the real workbench.js: 11.4 -> 3.1 MB).
Measured: time to the whole body, for a browser-like request (Accept-Encoding: gzip), in four ways:
direct; gateway first fetch (cache miss) and later fetches (hits); and the same with HAProxy doing the
compression itself ("compression offload": the upstream sends identity, HAProxy gzips at level 1 and caches).
"""
import argparse
import gzip
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ASSET = "/stable-0123456789abcdef0123456789abcdef01234567/static/out/vs/workbench/workbench.web.main.js"


def _body() -> bytes:
    chunks, size = [], 0
    for path in sorted((ROOT / ".venv" / "lib").rglob("*.py")):
        data = path.read_bytes()
        chunks.append(data)
        size += len(data)
        if size >= 11_400_000:
            break
    return b"".join(chunks)[:11_400_000]


BODY = None


async def app(scope, receive, send):
    global BODY
    if scope["type"] == "lifespan":
        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                BODY = _body()
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    headers = dict(scope["headers"])
    body = BODY
    extra = []
    if b"gzip" in headers.get(b"accept-encoding", b""):
        body = gzip.compress(BODY, compresslevel=6)
        extra = [(b"content-encoding", b"gzip"), (b"vary", b"Accept-Encoding")]
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/javascript"), (b"cache-control", b"public, max-age=31536000"),
        (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch(url, host=None, cookie=None):
    headers = {"Accept-Encoding": "gzip"}
    if host:
        headers["Host"] = host
    if cookie:
        headers["Cookie"] = cookie
    t0 = time.perf_counter()
    with httpx.stream("GET", url, headers=headers, timeout=60) as r:
        wire = sum(len(c) for c in r.iter_raw())
        encoding = r.headers.get("content-encoding", "identity")
        assert r.status_code == 200, r.status_code
    return (time.perf_counter() - t0) * 1000, wire, encoding


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--code-server", metavar="IP:PORT", help="measure a running code-server instead")
    parser.add_argument("--path", default=ASSET, help="the asset (with --code-server: its workbench.js path)")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="hgws", dir="/tmp"))
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings.base", GATEWAY_RUN_DIR=str(run_dir),
                      GATEWAY_JWT_KEYS="bench:" + "k" * 48, LOG_LEVEL="WARNING")
    import django

    django.setup()
    from workspaces.gateway import routes
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess
    from workspaces.gateway.tokens import session_token_issue

    if args.code_server:
        up_address, upstream = args.code_server, None
    else:
        up_port = free_port()
        up_address = f"127.0.0.1:{up_port}"
        upstream = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.gateway_static:app", "--port",
                                     str(up_port), "--no-access-log", "--log-level", "warning"], cwd=ROOT)
    asset = args.path
    results = {"bench": "gateway_static", "upstream": "code-server" if args.code_server else "simulated",
               "path": asset}
    try:
        host, port = up_address.split(":")
        for _ in range(100):
            try:
                socket.create_connection((host, int(port)), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        direct = [fetch(f"http://{up_address}{asset}") for _ in range(args.repeat)]
        results["direct_ms"] = round(statistics.median(d[0] for d in direct), 1)
        results["direct_wire_bytes"] = direct[0][1]
        for variant, compression in (("cache", False), ("offload_cache", True)):
            cfg = gateway_config(run_dir=run_dir / variant, port=free_port(), bind_address="127.0.0.1",
                                 static_compression=compression, cache_total_mb=128,
                                 cache_max_object_bytes=32 * 1024 * 1024)
            gateway = GatewayProcess(cfg, stderr=subprocess.DEVNULL)
            gateway.start()
            try:
                times = []
                for i in range(args.repeat):
                    key = f"ws{i}"  # a workspace's first fetch: a new host each time
                    routes.route_set(host_key=key, session_id=f"s{i}", address=up_address, cfg=cfg)
                    token, _ = session_token_issue(tenant_slug="b", user_id=1, workspace_host_key=key,
                                                   session_id=f"s{i}", container_id=1)
                    host, cookie = f"{key}.localhost:{cfg.port}", f"hearth_gw={token}"
                    first = fetch(f"http://127.0.0.1:{cfg.port}{asset}", host, cookie)
                    hit = fetch(f"http://127.0.0.1:{cfg.port}{asset}", host, cookie)
                    times.append((first, hit))
                results[variant] = {
                    "first_ms": round(statistics.median(t[0][0] for t in times), 1),
                    "hit_ms": round(statistics.median(t[1][0] for t in times), 1),
                    "wire_bytes": times[0][1][1], "encoding": times[0][1][2],
                    "hit_wire_bytes": times[0][1][1],
                }
            finally:
                gateway.stop()
    finally:
        if upstream:
            upstream.terminate()
            upstream.wait(10)
        shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps(results))
    c, o = results["cache"], results["offload_cache"]
    print(f"\n{asset.rsplit('/', 1)[-1]} ({results['upstream']}), time to the whole body "
          f"(median of {args.repeat}), Accept-Encoding: gzip\n"
          f"  direct, gzipped on the fly upstream          {results['direct_ms']:>7} ms  "
          f"({results['direct_wire_bytes'] / 1e6:.1f} MB on the wire)\n"
          f"  gateway cache: first fetch / cached          {c['first_ms']:>7} ms / {c['hit_ms']} ms  ({c['encoding']}, "
          f"{c['wire_bytes'] / 1e6:.1f} MB)\n"
          f"  gateway offload + gzip level 1 + cache       {o['first_ms']:>7} ms / {o['hit_ms']} ms  ({o['encoding']}, "
          f"{o['wire_bytes'] / 1e6:.1f} MB)\n")


if __name__ == "__main__":
    main()
