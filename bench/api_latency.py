"""The REST API's request path through gunicorn: reads (token check, tenant-scoped query, JSON) and a warm open,
with the server's time next to the client's.

    DATABASE_URL=postgres://…/hearth_api_bench .venv/bin/python bench/api_latency.py [--code DIR] [--seconds 5]
                                                                                     [--opens 20] [--no-open]
                                                                                     [--no-floor]
    .venv/bin/python bench/api_latency.py --url http://host:8000 --token hth_…   (a running Hearth: client time only)

Without --url it sets up two synthetic tenants (an owner and an API token each; five workspaces to list in one,
the ones to open in the other) in DATABASE_URL (migrated on the first run), starts gunicorn in the shape of
scripts/serve-web.sh (2 × cores + 1 workers × 4 threads) from `--code` (default: this checkout; point it at an
exported older commit to compare), and drives it with wrk (C, one thread: the client costs little of the shared
CPU):
  GET /api/v1/tenant and GET /api/v1/workspaces — a warm-up, then one connection (latency) and eight (throughput);
  warm open — POST /api/v1/workspaces/<id>/open, one after another, each against a warm container of the tiny
              image (needs dockerd and root, like bench/claim.py; its containers carry `<HEARTH_INSTANCE>-apibench`
              and are removed at the end; a real HAProxy gateway gets the routes);
  the floor — the same gunicorn settings serving a bare WSGI app that answers GET /api/v1/tenant's body: what
              this machine charges for any request, so each figure is also a ratio to it; and the p50 of one
              commit on this PostgreSQL (its WAL flush), which every open's claim waits for: an open's floor is
              one floor request plus one commit.
Server time is gunicorn's own request time (access-log field %(D)s: from the parsed request to the last byte
written), read from the access log of each phase. CPU per request: the gunicorn workers' CPU and their PostgreSQL
backends' CPU (from /proc) over the phase, divided by the requests served.
Prints one JSON line, then a table with met/MISSED per target.
"""
import argparse
import atexit
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stats import pct as _pct

ROOT = Path(__file__).resolve().parent.parent
READS = ["/api/v1/tenant", "/api/v1/workspaces"]
TARGET_SERVER_P50_MS, TARGET_RPS_C8, TARGET_OPEN_P50_MS = 3.0, 600, 8.0
TICK = os.sysconf("SC_CLK_TCK")

WRK_SCRIPT = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('{"requests": %d, "errors": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout, summary.duration,
    latency:percentile(50), latency:percentile(99)))
end
"""


def pct(values, p):
    return _pct(values, p)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The floor arm's WSGI app: the same JSON body Hearth answered, with nothing behind it.
FLOOR_APP = """
BODY = open(__file__[:-3] + ".json", "rb").read()
HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))]


def application(environ, start_response):
    start_response("200 OK", HEADERS)
    return [BODY]
"""


class Gunicorn:
    """gunicorn serving `code_dir`, its access log holding `<method> <path> <status> <µs>` per request.
    `floor_body`: serve a bare WSGI app answering that body instead of Hearth (the machine's floor)."""

    def __init__(self, code_dir, env, *, workers, threads, floor_body=None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_dir = Path(tempfile.mkdtemp(prefix="hapibench"))
        self.access_log = self.log_dir / "access.log"
        self.access_log.touch()
        app = "config.wsgi:application"
        if floor_body is not None:
            (self.log_dir / "floor_app.py").write_text(FLOOR_APP)
            (self.log_dir / "floor_app.json").write_bytes(floor_body)
            code_dir, env, app = self.log_dir, dict(env, PYTHONPATH=str(self.log_dir)), "floor_app:application"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", app, "--bind", f"127.0.0.1:{self.port}",
             "--workers", str(workers), "--threads", str(threads), "--access-logfile", str(self.access_log),
             "--access-logformat", "%(m)s %(U)s %(s)s %(D)s", "--error-logfile", str(self.log_dir / "error.log")],
            cwd=code_dir, env=env)
        self.workers = workers
        self.offset = 0

    def wait_ready(self, token):
        import http.client

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"gunicorn exited: {(self.log_dir / 'error.log').read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", READS[0], headers={"Authorization": f"Bearer {token}"})
                status = conn.getresponse().status
                conn.close()
                if status == 200 and len(self.worker_pids()) == self.workers:
                    return
                if status != 200:
                    raise SystemExit(f"GET {READS[0]} answered {status}")
            except OSError:
                pass
            time.sleep(0.3)
        raise SystemExit("gunicorn did not start within 60 s")

    def worker_pids(self):
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        except OSError:
            return []
        return [int(pid) for pid in children]

    def new_log_lines(self):
        """Access-log lines written since the last call (gunicorn writes each one as the request ends)."""
        time.sleep(0.2)
        with open(self.access_log) as f:
            f.seek(self.offset)
            text = f.read()
            self.offset = f.tell()
        return [line.split() for line in text.splitlines() if line.strip()]

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
        shutil.rmtree(self.log_dir, ignore_errors=True)


def cpu_seconds(pids):
    """utime + stime of `pids` (processes: all their threads) from /proc/<pid>/stat."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


def backend_pids(db_name):
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                       [db_name])
        return [row[0] for row in cursor.fetchall()]


def wrk(url, path, token, *, connections, seconds):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_SCRIPT)
    try:
        out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "10s",
                              "-s", script.name, "-H", f"Authorization: Bearer {token}", url + path],
                             capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(script.name)
    got = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    rps = round(got["requests"] / (got["duration_us"] / 1e6), 1)
    return {"n": got["requests"], "errors": got["errors"], "rps": rps,
            "p50_ms": round(got["p50_us"] / 1000, 2), "p99_ms": round(got["p99_us"] / 1000, 2)}


class Measure:
    """Server time and CPU per request of one phase against our own gunicorn (nothing against --url)."""

    def __init__(self, server, db_name):
        self.server, self.db_name = server, db_name

    def __enter__(self):
        if self.server:
            self.server.new_log_lines()
            self.backends = {pid: cpu_seconds([pid]) for pid in backend_pids(self.db_name)}
            self.cpu_web = cpu_seconds(self.server.worker_pids())
        return self

    def finish(self, result, path_pattern):
        if not self.server:
            return result
        cpu_web = cpu_seconds(self.server.worker_pids()) - self.cpu_web
        # A backend that connected during the phase (a worker thread's first query) counts from zero.
        cpu_db = sum(cpu_seconds([pid]) - self.backends.get(pid, 0.0) for pid in backend_pids(self.db_name))
        lines = [line for line in self.server.new_log_lines() if re.fullmatch(path_pattern, line[1])]
        server_ms = [int(line[3]) / 1000 for line in lines]
        n = max(len(lines), 1)
        result.update({"server_p50_ms": pct(server_ms, 50), "server_p99_ms": pct(server_ms, 99),
                       "web_cpu_ms_per_request": round(cpu_web * 1000 / n, 2),
                       "db_cpu_ms_per_request": round(cpu_db * 1000 / n, 2)})
        return result

    def __exit__(self, *exc):
        return False


def reads(url, token, server, db_name, seconds, paths=READS):
    results = {}
    for path in paths:
        wrk(url, path, token, connections=8, seconds=1)  # every worker thread connected and warm
        phase = {}
        for label, connections in (("c1", 1), ("c8", 8)):
            with Measure(server, db_name) as measure:
                got = wrk(url, path, token, connections=connections, seconds=seconds)
                phase[label] = measure.finish(got, re.escape(path))
        results[path] = phase
    return results


def commit_floor(samples=100):
    """p50 ms of committing one row INSERT on this PostgreSQL: the WAL flush every warm open's claim waits for."""
    from django.db import connection

    timings = []
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id int)")
        for _ in range(samples):
            started = time.perf_counter()
            cursor.execute("INSERT INTO bench_commit_probe VALUES (1)")  # autocommit: one commit each
            timings.append((time.perf_counter() - started) * 1000)
        cursor.execute("DROP TABLE bench_commit_probe")
    return pct(timings, 50)


def fetch(url, path, token):
    import urllib.request

    request = urllib.request.Request(url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read()


# --- our own Hearth: setup, warm open, cleanup ---------------------------------------------------------------


def django_setup():
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")
    os.environ["HEARTH_INSTANCE"] = os.environ.get("HEARTH_INSTANCE", "hearth") + "-apibench"
    os.environ.setdefault("STORAGE_ROOT", str(ROOT / "var" / "bench-storage"))
    if "GATEWAY_RUN_DIR" not in os.environ:  # short: unix socket paths are limited to 108 bytes
        os.environ["GATEWAY_RUN_DIR"] = tempfile.mkdtemp(prefix="hapigw", dir="/tmp")
        atexit.register(shutil.rmtree, os.environ["GATEWAY_RUN_DIR"], True)
    os.environ.setdefault("HEARTH_GATEWAY_PORT", str(free_port()))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor

    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        print("migrating the benchmark database (first run: about a minute)…", file=sys.stderr)
        call_command("migrate", verbosity=0)


def setup(opens):
    """Two synthetic tenants, each with an owner and a fresh token: `apibench` with five workspaces to list, and
    `apibench-open` with `opens` workspaces to open (apart, so the list stays five rows)."""
    from tenants.models import ApiToken, Membership, Plan, Role, Tenant, User
    from tenants.services import api_token_create
    from workspaces import services
    from workspaces.models import Workspace, WorkspaceTemplate

    template, _ = WorkspaceTemplate.objects.update_or_create(
        slug="apibench-tiny", defaults=dict(name="bench tiny", image="hearth/tiny:1", internal_port=8080, cpus=0.1,
                                            memory_mb=64, pids_limit=64, warm_min=0, warm_max=0, max_containers=400,
                                            enabled=True, pool_paused=False))
    plan = Plan.objects.filter(max_concurrent_workspaces__isnull=True).order_by("sort_order").first()
    tokens, to_open = [], []
    for slug, count in (("apibench", 5), ("apibench-open", opens)):
        tenant, _ = Tenant.objects.get_or_create(slug=slug, defaults=dict(name=slug, plan=plan, synthetic=True))
        user, _ = User.objects.get_or_create(email=f"owner@{slug}.test")
        membership, _ = Membership.objects.get_or_create(tenant=tenant, user=user, defaults={"role": Role.OWNER})
        ApiToken.objects.filter(membership=membership).delete()
        tokens.append(api_token_create(membership=membership, name="bench", actor=user)[1])
        for i in range(count):
            name = f"bench-{i}"
            workspace = Workspace.objects.filter(tenant=tenant, owner=user, name=name, deleted_at__isnull=True).first()
            workspace = workspace or services.workspace_create(tenant=tenant, owner=user, name=name, template=template)
            if slug == "apibench-open":
                to_open.append(workspace)
    return template, tokens[0], tokens[1], to_open


def close_all():
    from workspaces import services
    from workspaces.models import Session

    for session in Session.objects.filter(ended_at__isnull=True, workspace__tenant__slug__startswith="apibench"):
        services.session_end(session=session, reason=Session.EndReason.CLOSED)


def warm_open(server, db_name, token, template, workspaces):
    """Each workspace opened once through HTTP, every open against a container already warm."""
    import http.client

    from workspaces import pool
    from workspaces.images import image_ensure
    from workspaces.models import Container, Session, WorkspaceTemplate

    close_all()
    image_ensure(template.image)
    WorkspaceTemplate.objects.filter(pk=template.pk).update(warm_min=len(workspaces), warm_max=len(workspaces))
    pool.pool_fill(template_id=template.pk)
    warm = Container.objects.filter(template=template, state=Container.State.WARM).count()
    if warm < len(workspaces):
        raise SystemExit(f"the pool reached only {warm} of {len(workspaces)} warm containers")
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    headers = {"Authorization": f"Bearer {token}", "Content-Length": "0"}
    timings, errors = [], []
    with Measure(server, db_name) as measure:
        for workspace in workspaces:
            started = time.perf_counter()
            conn.request("POST", f"/api/v1/workspaces/{workspace.pk}/open", headers=headers)
            response = conn.getresponse()
            body = response.read()
            elapsed = (time.perf_counter() - started) * 1000
            if response.status == 200:
                timings.append(elapsed)
            else:
                errors.append(f"{response.status}: {body[:200]!r}")
        cold = Session.objects.filter(workspace__in=workspaces, ended_at__isnull=True, cold_start=True).count()
        result = {"n": len(timings), "errors": len(errors), "cold_starts": cold, "p50_ms": pct(timings, 50),
                  "p99_ms": pct(timings, 99)}
        result = measure.finish(result, r"/api/v1/workspaces/\d+/open")
    conn.close()
    if errors:
        result["first_error"] = errors[0]
    return result


def cleanup(template):
    from django.conf import settings

    from workspaces import storage
    from workspaces.models import Container, WorkspaceTemplate
    from workspaces.runtime import DockerRuntime

    close_all()
    WorkspaceTemplate.objects.filter(pk=template.pk).update(warm_min=0, warm_max=0)
    runtime = DockerRuntime(settings.DOCKER_HOST)
    for c in runtime.list(instance=settings.HEARTH_INSTANCE):
        runtime.remove(c.engine_id)
    Container.objects.filter(template=template, state__in=Container.ACTIVE_STATES).update(
        state=Container.State.REMOVED)
    storage.slot_root_release()


def report(results):
    print(json.dumps(results))
    rows = []
    floor = results.get("floor")

    def times_floor(value, key, phase):
        """`value` as a multiple of the floor arm's figure (server time: × floor; req/s: floor's share)."""
        base = floor and floor[phase].get(key)
        return f" = {value / base:.1f}× floor" if base and value is not None else ""

    if floor:
        f1, f8 = floor["c1"], floor["c8"]
        rows.append(("gunicorn floor, 1 connection", f"server p50 {f1['server_p50_ms']} ms (client {f1['p50_ms']} ms; "
                     f"CPU/request {f1['web_cpu_ms_per_request']} ms): a bare WSGI app, {READS[0]}'s body", "-", None))
        rows.append(("gunicorn floor, 8 connections", f"{f8['rps']} req/s (client p50 {f8['p50_ms']} ms, server p50 "
                     f"{f8['server_p50_ms']} ms; {f8['errors']} errors)", "-", None))
        rows.append(("PostgreSQL commit (WAL flush)", f"p50 {floor['commit_p50_ms']} ms: one row INSERT, autocommit",
                     "-", None))
    for path in READS:
        r = results["reads"].get(path)
        if not r:
            continue
        c1, c8 = r["c1"], r["c8"]
        if c1.get("server_p50_ms") is not None:
            ok = c1["server_p50_ms"] <= TARGET_SERVER_P50_MS
            rows.append((f"GET {path}, 1 connection", f"server p50 {c1['server_p50_ms']} ms"
                         f"{times_floor(c1['server_p50_ms'], 'server_p50_ms', 'c1')} (client "
                         f"{c1['p50_ms']} ms; CPU/request web {c1['web_cpu_ms_per_request']} + PostgreSQL "
                         f"{c1['db_cpu_ms_per_request']} ms)", f"server p50 ≤ {TARGET_SERVER_P50_MS:g} ms", ok))
        else:
            rows.append((f"GET {path}, 1 connection", f"client p50 {c1['p50_ms']} ms", "-", None))
        server = f", server p50 {c8['server_p50_ms']} ms" if c8.get("server_p50_ms") is not None else ""
        share = f" = {c8['rps'] / floor['c8']['rps']:.2f} of floor" if floor and floor["c8"]["rps"] else ""
        rows.append((f"GET {path}, 8 connections", f"{c8['rps']} req/s{share} (client p50 {c8['p50_ms']} ms{server}; "
                     f"{c8['errors']} errors)", f"≥ {TARGET_RPS_C8} req/s", c8["rps"] >= TARGET_RPS_C8
                     and not c8["errors"]))
    o = results.get("warm_open")
    if o and o.get("n") and floor:
        # An open is at least one request and one commit (the claim): its floor here.
        base = floor["c1"]["p50_ms"] + floor["commit_p50_ms"]
        o["floor_ms"] = round(base, 2)
    if o and o.get("n"):
        ratio = f" = {o['p50_ms'] / o['floor_ms']:.1f}× floor {o['floor_ms']} ms" if o.get("floor_ms") else ""
        rows.append((f"warm open over HTTP × {o['n']}", f"client p50 {o['p50_ms']} ms{ratio}, p99 {o['p99_ms']} ms "
                     f"(server "
                     f"p50 {o.get('server_p50_ms')} ms; CPU/request web {o.get('web_cpu_ms_per_request')} + "
                     f"PostgreSQL {o.get('db_cpu_ms_per_request')} ms; {o['errors']} errors, {o['cold_starts']} cold)",
                     f"p50 ≤ {TARGET_OPEN_P50_MS:g} ms",
                     o["p50_ms"] <= TARGET_OPEN_P50_MS and not o["errors"] and not o["cold_starts"]))
    elif o:
        rows.append(("warm open over HTTP", f"no successful open ({o.get('first_error')})",
                     f"p50 ≤ {TARGET_OPEN_P50_MS:g} ms", False))
    print(f"\nload average {results['load_avg_before']} → {results['load_avg_after']}")
    for scenario, figure, target, ok in rows:
        verdict = "" if ok is None else ("met" if ok else "MISSED")
        print(f"{scenario:37} {figure:110} {target:22} {verdict}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running Hearth (then --token is needed; no server time, no open)")
    parser.add_argument("--token")
    parser.add_argument("--code", default=str(ROOT), help="the checkout gunicorn serves (default: this one)")
    parser.add_argument("--seconds", type=int, default=5, help="per read phase")
    parser.add_argument("--opens", type=int, default=20)
    parser.add_argument("--no-open", action="store_true")
    parser.add_argument("--no-floor", action="store_true", help="skip the bare-WSGI floor arm")
    parser.add_argument("--workers", type=int, default=2 * (os.cpu_count() or 1) + 1)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    results = {"bench": "api_latency", "load_avg_before": round(os.getloadavg()[0], 2)}
    if args.url:
        if not args.token:
            parser.error("--url needs --token")
        results.update(url=args.url, reads=reads(args.url, args.token, None, None, args.seconds))
    else:
        django_setup()
        from django.db import connection

        template, token, open_token, open_workspaces = setup(0 if args.no_open else args.opens)
        db_name = connection.settings_dict["NAME"]
        gateway = None
        if not args.no_open:
            from workspaces.gateway.process import GatewayProcess

            try:
                gateway = GatewayProcess()
                gateway.start()
            except Exception as exc:
                print(f"no gateway ({exc}): route adds fail fast and are logged", file=sys.stderr)
                gateway = None
        env = dict(os.environ, PYTHONPATH=args.code)
        (Path(args.code) / "var" / "static").mkdir(parents=True, exist_ok=True)  # WhiteNoise warns without it
        server = Gunicorn(args.code, env, workers=args.workers, threads=args.threads)
        try:
            server.wait_ready(token)
            results.update(code=args.code, workers=args.workers, threads=args.threads, gateway=gateway is not None)
            results["reads"] = reads(server.url, token, server, db_name, args.seconds)
            if not args.no_open:
                results["warm_open"] = warm_open(server, db_name, open_token, template, open_workspaces)
            floor_body = fetch(server.url, READS[0], token) if not args.no_floor else None
        finally:
            server.stop()
        if floor_body is not None:
            floor = Gunicorn(args.code, env, workers=args.workers, threads=args.threads, floor_body=floor_body)
            try:
                floor.wait_ready(token)
                results["floor"] = reads(floor.url, token, floor, db_name, args.seconds, paths=READS[:1])[READS[0]]
            finally:
                floor.stop()
            results["floor"]["commit_p50_ms"] = commit_floor()
        if not args.no_open:
            cleanup(template)
        if gateway:
            gateway.stop()
    results["load_avg_after"] = round(os.getloadavg()[0], 2)
    report(results)


if __name__ == "__main__":
    main()
