"""Opening code-server through the gateway in headless Chromium: opening URL -> workbench visible + WebSocket open.

    .venv/bin/python bench/gateway_browser.py [--opens 10] [--image hearth/code-server:4.100.3]

One warm code-server container (the runtime's image, on a network of this bench's own), one gateway per
variant (static assets gzipped by code-server and cached, or gzipped by HAProxy and cached). Three cases:
  cold-new-host   empty browser cache, a workspace host HAProxy has never served (a workspace's first open)
  cold-same-host  empty browser cache, HAProxy's cache already holds this host's assets (another browser)
  warm            the same browser reopening the same workspace (its cache warm: the host is stable)
Prints one JSON line and a summary. Not the portal's "Open" click: the claim and route add come on top.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=10)
    parser.add_argument("--image", default="hearth/code-server:4.100.3")
    args = parser.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="hgwbr", dir="/tmp"))
    os.environ.update(DJANGO_SETTINGS_MODULE="config.settings.base", GATEWAY_RUN_DIR=str(run_dir),
                      GATEWAY_JWT_KEYS="bench:" + "k" * 48, LOG_LEVEL="WARNING")
    import django

    django.setup()
    import docker
    import httpx
    from django.conf import settings
    from playwright.sync_api import sync_playwright

    from bench.gateway import free_port
    from workspaces.gateway import routes
    from workspaces.gateway.config import gateway_config
    from workspaces.gateway.process import GatewayProcess
    from workspaces.gateway.tokens import session_token_issue
    from workspaces.gateway.urls import workspace_url

    client = docker.from_env()
    labels = {"hearth.instance": settings.HEARTH_INSTANCE, "hearth.bench": "gateway-browser"}
    home = Path(tempfile.mkdtemp(prefix="hgwbrh", dir="/tmp"))
    shutil.chown(home, 1000, 1000)
    network = client.networks.create(f"{settings.HEARTH_INSTANCE}-gwbench", labels=labels)
    container = client.containers.run(
        args.image, detach=True, init=True, labels=labels, network=network.name,
        environment={"HEARTH_LATE_BIND": "none"}, volumes={str(home): {"bind": "/home/coder", "mode": "rw"}})
    results = {"bench": "gateway_browser", "opens": args.opens, "loadavg_before": os.getloadavg()[0]}
    try:
        container.reload()
        address = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"] + ":8080"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://{address}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-sync",
                                              "--disable-background-networking", "--disable-component-update"])

            def open_once(context, url):
                page = context.new_page()
                sockets = []
                page.on("websocket", lambda ws: sockets.append(ws))
                started = time.monotonic()
                page.goto(url)
                page.wait_for_selector(".monaco-workbench", state="visible", timeout=60_000)
                while not any(not ws.is_closed() for ws in sockets):
                    page.wait_for_timeout(10)
                elapsed = time.monotonic() - started
                page.close()
                return elapsed

            for variant, compression in (("code_server_gzip", False), ("haproxy_gzip", True)):
                cfg = gateway_config(run_dir=run_dir / variant, port=free_port(), bind_address="127.0.0.1",
                                     static_compression=compression)
                gateway = GatewayProcess(cfg, stderr=subprocess.DEVNULL)
                gateway.start()
                try:
                    def url_for(key, i, cfg=cfg):
                        routes.route_set(host_key=key, session_id=f"s{i}", address=address, cfg=cfg)
                        token, _ = session_token_issue(tenant_slug="b", user_id=1, workspace_host_key=key,
                                                       session_id=f"s{i}", container_id=1)
                        return workspace_url(host_key=key, token=token).replace(
                            f":{settings.HEARTH_GATEWAY_PORT}/", f":{cfg.port}/")

                    cases = {"cold_new_host": [], "cold_same_host": [], "warm": []}
                    same = url_for("same", 999)
                    open_once(browser.new_context(), same)  # fills HAProxy's cache for this host
                    warm_context = browser.new_context()
                    open_once(warm_context, same)
                    for i in range(args.opens):
                        context = browser.new_context()
                        cases["cold_new_host"].append(open_once(context, url_for(f"new{i}", i)))
                        context.close()
                        context = browser.new_context()
                        cases["cold_same_host"].append(open_once(context, same))
                        context.close()
                        cases["warm"].append(open_once(warm_context, same))
                    results[variant] = {k: round(statistics.median(v), 2) for k, v in cases.items()}
                    warm_context.close()
                finally:
                    gateway.stop()
            browser.close()
    finally:
        container.remove(force=True)
        network.remove()
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(run_dir, ignore_errors=True)
    print(json.dumps(results))
    print(f"\ncode-server through the gateway, opening URL -> .monaco-workbench visible + WebSocket open, p50 of "
          f"{args.opens} (load average {results['loadavg_before']:.1f} on 2 cores)")
    for variant in ("code_server_gzip", "haproxy_gzip"):
        r = results[variant]
        print(f"  {variant:17s} cold browser, new host {r['cold_new_host']:.2f} s   cold browser, host cached "
              f"{r['cold_same_host']:.2f} s   warm browser {r['warm']:.2f} s")
    print("  targets (issue 4, from the portal click): cold p50 <= 2.0 s, warm p50 <= 1.2 s")


if __name__ == "__main__":
    main()
