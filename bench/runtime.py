"""Runtime benchmark: container create -> ready (tiny image), bind/unbind cost, and code-server's late-bind modes.

    .venv/bin/python bench/runtime.py [--n 20] [--binds 200] [--code-server 3]

Prints one JSON line, then a human summary. Needs root and the Docker engine; builds hearth/tiny:1 if missing.
`--code-server N` compares the two ways to start code-server before the user's home is bound:
  wait — the entrypoint waits for the marker in the bound home, then starts code-server there;
  warm — code-server is already running on the empty slot when the home is bound.
For each it measures from the bind to /healthz 200, to the workbench rendered in Chromium with the theme of the
user's own extension (selected in the user's settings), and to a command typed in the terminal having run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from stats import pct as _pct

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from workspaces import storage  # noqa: E402
from workspaces.images import image_ensure  # noqa: E402
from workspaces.runtime import ContainerSpec, DockerRuntime  # noqa: E402

INSTANCE = f"{settings.HEARTH_INSTANCE}-bench"


def pct(values, p):  # ms
    return _pct(values, p, scale=1000)


def summary(values):
    return {"n": len(values), "p50_ms": pct(values, 50), "p95_ms": pct(values, 95), "max_ms": pct(values, 100)}


def spec_for(image, slot, **extra):
    key = uuid.uuid4().hex[:10]
    return ContainerSpec(
        name=f"hearth-{INSTANCE}-{key}",
        image=image,
        internal_port=8080,
        cpus=extra.pop("cpus", 0.5),
        memory_mb=extra.pop("memory_mb", 64),
        pids_limit=extra.pop("pids_limit", 64),
        environment=extra.pop("environment", {}),
        labels={"hearth.instance": INSTANCE, "hearth.bench": "1"},
        slot_path=str(slot),
    )


def bench_tiny(runtime, n):
    create, ready = [], []
    image_ensure("hearth/tiny:1", runtime=runtime)
    runtime.ensure_network()
    for i in range(n):
        slot = storage.slot_create(f"bench-tiny-{i}")
        t0 = time.perf_counter()
        container = runtime.create(spec_for("hearth/tiny:1", slot))
        t1 = time.perf_counter()
        ok = runtime.wait_ready(container, timeout=10, path="/healthz")
        t2 = time.perf_counter()
        runtime.remove(container.engine_id)
        storage.slot_remove(slot)
        if ok:
            create.append(t1 - t0)
            ready.append(t2 - t0)
    return {"create": summary(create), "create_to_ready": summary(ready)}


def bench_binds(n):
    slot = storage.slot_create("bench-bind")
    source = storage.user_storage_path(tenant_slug="bench", user_id=1, workspace_id=1)
    bind, unbind, binary = [], [], []
    for _ in range(n):
        t0 = time.perf_counter()
        storage.slot_bind(slot=slot, source=source)
        t1 = time.perf_counter()
        storage.slot_unbind(slot=slot)
        t2 = time.perf_counter()
        bind.append(t1 - t0)
        unbind.append(t2 - t1)
    for _ in range(min(n, 50)):  # the same bind through the mount(8) binary, for comparison
        t0 = time.perf_counter()
        subprocess.run(["mount", "--bind", str(source), str(slot)], check=True)
        binary.append(time.perf_counter() - t0)
        subprocess.run(["umount", str(slot)], check=True)
    storage.slot_remove(slot)
    return {"slot_bind": summary(bind), "slot_unbind": summary(unbind), "mount_binary_bind": summary(binary)}


EXTENSION = {
    "name": "test-theme", "publisher": "hearth", "version": "0.0.1", "engines": {"vscode": "^1.60.0"},
    "contributes": {"themes": [{"label": "Hearth HC Test", "uiTheme": "hc-black", "path": "./theme.json"}]},
}


def user_home(tag):
    """A user's home with their own settings selecting a theme from their own extension."""
    home = storage.user_storage_path(tenant_slug="bench", user_id=2, workspace_id=tag)
    data = home / ".local/share/code-server"
    (data / "User").mkdir(parents=True, exist_ok=True)
    settings_json = {"workbench.colorTheme": "Hearth HC Test", "workbench.startupEditor": "none"}
    (data / "User/settings.json").write_text(json.dumps(settings_json))
    ext = data / "extensions/hearth.test-theme-0.0.1"
    ext.mkdir(parents=True, exist_ok=True)
    (ext / "package.json").write_text(json.dumps(EXTENSION))
    (ext / "theme.json").write_text(json.dumps({"name": "Hearth HC Test", "type": "hc", "colors": {}}))
    subprocess.run(["chown", "-R", "1000:1000", str(home)], check=True)
    return home


def open_workbench(page, origin, home, t0):
    """Load the workbench, wait for the user's extension theme, run a command in the terminal: phase times."""
    page.goto(origin + "/", timeout=60_000)
    page.wait_for_function(
        "() => (document.querySelector('.monaco-workbench') || {className: ''}).className.includes('hc-black')",
        timeout=60_000,
    )
    t_workbench = time.perf_counter() - t0
    page.keyboard.press("Control+Backquote")
    page.wait_for_selector(".xterm-helper-textarea", timeout=30_000)
    made = home / "from-terminal.txt"
    for _ in range(6):  # keys typed before the shell is attached may be lost: retype until it ran
        page.focus(".xterm-helper-textarea")
        page.keyboard.type("echo ok > ~/from-terminal.txt\n")
        deadline = time.monotonic() + 5
        while not made.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        if made.exists():
            return t_workbench, time.perf_counter() - t0
    raise AssertionError("the terminal never ran the command")


def bench_code_server(runtime, n):
    from playwright.sync_api import sync_playwright

    image = "hearth/code-server:4.100.3"
    image_ensure(image, runtime=runtime)
    results = {mode: {"healthz": [], "workbench": [], "terminal": []} for mode in ("wait", "warm")}
    with sync_playwright() as p:
        for i in range(n):
            for mode in ("wait", "warm"):  # interleaved, so load changes on the machine hit both alike
                slot = storage.slot_create(f"bench-cs-{mode}-{i}")
                spec = spec_for(image, slot, cpus=1, memory_mb=1024, pids_limit=512,
                                environment={"HEARTH_LATE_BIND": mode})
                container = runtime.create(spec)
                try:
                    if mode == "warm":
                        assert runtime.wait_ready(container, timeout=60, path="/healthz"), "warm code-server not up"
                    time.sleep(2.0)  # a warm pool member has been sitting idle before its claim
                    home = user_home(f"{mode}{i}")
                    origin = f"http://{container.address}"
                    browser = p.chromium.launch(
                        executable_path="/usr/bin/chromium",
                        args=["--no-sandbox", "--disable-gpu", f"--unsafely-treat-insecure-origin-as-secure={origin}"],
                    )
                    try:
                        page = browser.new_page()
                        t0 = time.perf_counter()
                        storage.slot_bind(slot=slot, source=home)
                        assert runtime.wait_ready(container, timeout=60, path="/healthz")
                        results[mode]["healthz"].append(time.perf_counter() - t0)
                        workbench, terminal = open_workbench(page, origin, home, t0)
                        results[mode]["workbench"].append(workbench)
                        results[mode]["terminal"].append(terminal)
                    finally:
                        browser.close()
                finally:
                    runtime.remove(container.engine_id)
                    storage.slot_remove(slot)
    return {
        mode: {f"bind_to_{phase}": summary(values) for phase, values in phases.items()}
        for mode, phases in results.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="tiny containers to create")
    parser.add_argument("--binds", type=int, default=200, help="bind/unbind cycles")
    parser.add_argument("--code-server", type=int, default=0, help="code-server runs per late-bind mode")
    args = parser.parse_args()

    scratch = Path(tempfile.mkdtemp(prefix="hearth-bench-"))
    settings.STORAGE_ROOT = scratch
    runtime = DockerRuntime(settings.DOCKER_HOST, node_name="bench", instance=INSTANCE)
    runtime.ping()
    out = {"bench": "runtime", "load_avg": os.getloadavg()[0], "cores": os.cpu_count()}
    try:
        out["binds"] = bench_binds(args.binds)
        out["tiny"] = bench_tiny(runtime, args.n)
        if args.code_server:
            out["code_server"] = bench_code_server(runtime, args.code_server)
    finally:
        for c in runtime.list(instance=INSTANCE):
            runtime.remove(c.engine_id)
        for net in runtime.api.networks(names=[runtime.network]):
            runtime.api.remove_network(net["Id"])
        storage.slot_root_release(scratch / "slots")
        shutil.rmtree(scratch, ignore_errors=True)

    print(json.dumps(out))
    b, t = out["binds"], out["tiny"]
    print(f"\nload average {out['load_avg']:.1f} on {out['cores']} cores")
    print(f"slot_bind   p50 {b['slot_bind']['p50_ms']} ms  p95 {b['slot_bind']['p95_ms']} ms "
          f"(mount binary p50 {b['mount_binary_bind']['p50_ms']} ms); unbind p50 {b['slot_unbind']['p50_ms']} ms")
    print(f"tiny create p50 {t['create']['p50_ms']} ms  p95 {t['create']['p95_ms']} ms; "
          f"create -> /healthz p50 {t['create_to_ready']['p50_ms']} ms  p95 {t['create_to_ready']['p95_ms']} ms")
    for mode, r in out.get("code_server", {}).items():
        print(f"code-server {mode:4}: bind -> /healthz p50 {r['bind_to_healthz']['p50_ms']} ms, -> workbench with "
              f"the user's extension theme p50 {r['bind_to_workbench']['p50_ms']} ms, -> terminal ran a command "
              f"p50 {r['bind_to_terminal']['p50_ms']} ms")


if __name__ == "__main__":
    main()
