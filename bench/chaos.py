"""Chaos suite (issue 12): faults one at a time under load, then checks that nothing was lost, doubled or left hanging.

    sudo .venv/bin/python bench/chaos.py [--seed-from postgres://…/migrated_db] [--faults web,worker,…]

Brings up a stack of its own (bench/chaos_stack.py: PostgreSQL cluster, redis-server, dockerd, gateway, web,
Celery worker and beat; nothing shared is restarted) and, while load runs — `OPENERS` threads opening, visiting
through the gateway and closing their workspaces over the HTTP API with real tokens, `INGESTERS` threads posting
usage batches with unique ids to the ingestion API and resending every batch they got no answer for — injects,
one at a time: SIGKILL to web, worker, beat and gateway by pid (the suite then restarts it as systemd would), and a
restart of Redis, PostgreSQL and the Docker engine. After each fault it polls until:

1. every acknowledged usage event is stored exactly once, nothing unsent is stored, the month's roll-up equals the
   events' sum, and every session's `workspace_seconds` events add up to exactly its metered length;
2. no live session is on a container that does not run (allowed until `DEAD_SESSION_GRACE`, 30 s, after recovery);
3. no container serves two sessions (rows, and two gateway routes to one address), the gateway's routes equal the
   live sessions;
4. after the fault an open, a gateway visit and an ingestion succeeded again.

Time to consistency runs from the fault to the first poll where all hold. Then the load stops (every unanswered
batch resent until answered) and the strict check runs: acknowledged = stored, and no request went past its
client timeout without an answer (connection errors while a process is dead are answers: counted apart).
One opener keeps its session open and visits it every second; when a visit fails it opens again (a resume must
not route it to a container that stopped). Another keeps its session open and idle, like a forgotten tab: only the
reconciler can find its container dead and end it (check 2). Prints a table (one fault per row) and one JSON line;
exits 1 if any fault failed.
"""
import argparse
import json
import os
import random
import sys
import tempfile
import threading
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from chaos_stack import Stack  # noqa: E402

FAULTS = ("web", "worker", "beat", "gateway", "events", "redis", "postgres", "docker")
OPENERS, INGESTERS, BATCH = 5, 2, 5  # openers 0 and 1 hold their sessions (see the module's docstring)
OPEN_TIMEOUT, CLOSE_TIMEOUT, GATEWAY_TIMEOUT, INGEST_TIMEOUT = 20.0, 20.0, 5.0, 10.0
DEAD_SESSION_GRACE = 30.0  # the issue: no live session on a dead container 30 s after recovery
# A session `starting` (an asynchronous cold open) is work in flight, not an inconsistency: its worker may wait for a
# node (WORKSPACES_COLD_START_WAIT) and its start (WORKSPACES_PROVISION_TIMEOUT); a start lost with a killed worker is
# enqueued again by the reclaim tick (every 30 s). Past that bound it must have a container or have been given up.
STARTING_GRACE = 60.0 + 40.0 + 30.0
CONSISTENCY_BUDGET = 60.0  # after recovery; past it the fault fails
DRAIN_BUDGET = 60.0  # resending unanswered batches once the load stops
METER = "ai_builder_tokens"
TINY = "hearth/tiny:1"


class Load:
    """The clients: what they sent, what was acknowledged, and every request's outcome."""

    def __init__(self, api, gateway_port, users, service_token, tenant_slug, prefix):
        self.api, self.gateway_port, self.users = api, gateway_port, users
        self.service_token, self.tenant_slug, self.prefix = service_token, tenant_slug, prefix
        self.lock = threading.Lock()
        self.sent, self.acked, self.rejected = {}, {}, []
        self.stop, self.hard_stop = threading.Event(), threading.Event()
        self.threads, self.seq = [], 0
        self.reset()

    def reset(self):
        with self.lock:
            self.counts = {"requests": 0, "errors": 0, "conn_errors": 0, "timeouts": 0}
            self.statuses, self.samples = {}, []
            self.last_ok = {}
            self.retried = set()  # ids of batches resent after no answer or an error (stored once all the same)

    def call(self, kind, send, ok_statuses):
        """One request: its outcome counted; the response if answered, else None."""
        import httpx

        with self.lock:
            self.counts["requests"] += 1
        try:
            response = send()
        except httpx.TimeoutException as exc:
            self._note("timeouts", f"{kind}: {type(exc).__name__}")
            return None
        except httpx.TransportError as exc:
            self._note("conn_errors", f"{kind}: {type(exc).__name__}")
            return None
        with self.lock:
            key = f"{kind} {response.status_code}"
            self.statuses[key] = self.statuses.get(key, 0) + 1
            if response.status_code in ok_statuses:
                self.last_ok[kind] = time.monotonic()
            elif response.status_code == 202:
                pass  # a cold open answered at once, `starting`: the client asks again (resumed, then 200)
            else:
                self.counts["errors"] += 1
                if len(self.samples) < 8:
                    self.samples.append(f"{key}: {response.text[:160]}")
        return response

    def _note(self, what, sample):
        with self.lock:
            self.counts[what] += 1
            if len(self.samples) < 8:
                self.samples.append(sample)

    def start(self):
        self.stop.clear()
        self.hard_stop.clear()
        self.threads = [threading.Thread(target=self._opener, args=(u,), daemon=True) for u in self.users]
        self.threads += [threading.Thread(target=self._ingester, args=(k,), daemon=True) for k in range(INGESTERS)]
        for t in self.threads:
            t.start()

    def finish(self):
        """Stop the load; ingesters resend their last batch until it is answered (DRAIN_BUDGET)."""
        self.stop.set()
        deadline = time.monotonic() + DRAIN_BUDGET
        for t in self.threads:
            t.join(max(0.1, deadline - time.monotonic()))
        self.hard_stop.set()
        for t in self.threads:
            t.join(30)
        return [t.name for t in self.threads if t.is_alive()]

    def _opener(self, user):
        import httpx

        client = httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {user['token']}"})
        gateway = httpx.Client()
        while not self.stop.is_set():
            opened = self.call("open", lambda: client.post(f"/workspaces/{user['workspace']}/open",
                                                           timeout=OPEN_TIMEOUT), (200,))
            if opened is None or opened.status_code != 200:
                time.sleep(0.5)
                continue
            body = opened.json()
            self._visit(gateway, body)
            if user.get("holds") == "idle":  # an open tab nobody looks at: only the reconciler can find it dead
                self.stop.wait()
                continue
            if user.get("holds"):  # keeps its session: visits it until it ends (a fault), then opens again
                while not self.stop.is_set():
                    time.sleep(1.0)
                    visit = self._visit(gateway, body)
                    if visit is not None and visit.status_code != 200:
                        break
                continue
            time.sleep(0.3)
            self.call("close", lambda b=body: client.post(f"/sessions/{b['session']}/close", timeout=CLOSE_TIMEOUT),
                      (200, 204))
            time.sleep(0.2)
        client.close()
        gateway.close()

    def _visit(self, gateway, opened):
        """A page of the workspace through the gateway, as the browser asks for it (token cookie, host name)."""
        url = urlsplit(opened["url"])
        return self.call("gateway", lambda: gateway.get(
            f"http://127.0.0.1:{self.gateway_port}/", headers={"Host": url.netloc},
            cookies={"hearth_gw": parse_qs(url.query)["token"][0]}, timeout=GATEWAY_TIMEOUT), (200,))

    def _ingester(self, k):
        import httpx

        client = httpx.Client(base_url=self.api, headers={"Authorization": f"Bearer {self.service_token}"})
        while not self.stop.is_set():
            with self.lock:
                first, self.seq = self.seq, self.seq + BATCH
            now = int(time.time())
            batch = [{"id": f"{self.prefix}{first + i}", "tenant": self.tenant_slug, "meter": METER,
                      "quantity": random.randint(1, 1000), "timestamp": now} for i in range(BATCH)]
            with self.lock:
                self.sent.update({e["id"]: e["quantity"] for e in batch})
            while not self.hard_stop.is_set():
                answer = self.call("ingest", lambda b=batch: client.post("/usage/events", json={"events": b},
                                                                         timeout=INGEST_TIMEOUT), (200,))
                if answer is not None and answer.status_code == 200:
                    body = answer.json()
                    rejected = {r["id"] for r in body.get("rejected", [])}
                    with self.lock:
                        self.rejected += sorted(rejected)
                        self.acked.update({e["id"]: e["quantity"] for e in batch if e["id"] not in rejected})
                    break
                with self.lock:
                    self.retried.update(e["id"] for e in batch)
                time.sleep(0.3)
            time.sleep(0.05)
        client.close()

    def snapshot(self):
        with self.lock:
            return dict(self.acked), dict(self.sent)


# --- checks (this process reads the private database and engine directly) ------------------------------


def usage_problems(ctx, load, final=False):
    from django.db import connection, transaction
    from django.db.models import Sum

    from metering.models import UsageEvent, UsageRollup
    from workspaces.models import Session

    acked, _ = load.snapshot()  # before the read: every id acknowledged by then must be stored
    with transaction.atomic():  # one snapshot for events, roll-ups and sessions while ingestion goes on
        with connection.cursor() as cursor:
            cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        stored = dict(UsageEvent.objects.filter(event_id__startswith=load.prefix).values_list("event_id",
                                                                                                "quantity"))
        rollup = UsageRollup.objects.filter(tenant=ctx["tenant"], meter=ctx["meter"], period="month").aggregate(
            q=Sum("quantity"))["q"] or 0
        total = sum(UsageEvent.objects.filter(tenant=ctx["tenant"], meter=ctx["meter"]).values_list(
            "quantity", flat=True))
        seconds = {}
        for subject, quantity in UsageEvent.objects.filter(tenant=ctx["tenant"], meter=ctx["seconds"]).values_list(
                "subject", "quantity"):
            seconds[subject.get("session")] = seconds.get(subject.get("session"), 0) + quantity
        sessions = list(Session.objects.filter(tenant=ctx["tenant"]).only("id", "started_at", "ended_at",
                                                                           "metered_until", "container"))
    _, sent = load.snapshot()  # after the read: every id stored by then was sent
    problems = []
    lost = [i for i in acked if i not in stored]
    unsent = [i for i in stored if i not in sent]
    if lost:
        problems.append(f"{len(lost)} acknowledged events not stored (e.g. {lost[:3]})")
    if unsent:
        problems.append(f"{len(unsent)} stored events never sent (e.g. {unsent[:3]})")
    if any(stored[i] != q for i, q in acked.items() if i in stored):
        problems.append("a stored event's quantity differs from the one sent")
    if final and set(stored) != set(acked):
        problems.append(f"stored {len(stored)} events, acknowledged {len(acked)} (sent {len(sent)})")
    if load.rejected:
        problems.append(f"{len(load.rejected)} events rejected (e.g. {load.rejected[:3]})")
    if rollup != total:
        problems.append(f"month roll-up {rollup} != events' sum {total}")
    for s in sessions:
        until = s.ended_at or s.metered_until
        want = int(until.timestamp()) - int(s.started_at.timestamp()) if until else 0
        if s.container_id is None:
            want = 0  # never got a container (given up while starting): nothing to meter
        got = seconds.get(str(s.id), 0)
        if s.ended_at is not None and got != want or s.ended_at is None and got > want:
            problems.append(f"session {s.id}: {got} workspace seconds metered for {want} s")
    return problems


def state_problems(ctx):
    """Checks 2 and 3: (dead-session problems, other problems)."""
    from workspaces import selectors
    from workspaces.gateway import routes
    from workspaces.models import Session
    from workspaces.runtime import DockerRuntime

    runtime = DockerRuntime(ctx["engine_url"], node_name="chaos-check", timeout=5)
    try:
        running = {c.labels.get("hearth.container") for c in runtime.list(instance=ctx["instance"])
                   if c.status == "running"}
    finally:
        runtime.close()
    live = list(Session.objects.filter(ended_at__isnull=True).values_list("id", "container_id"))
    # A session still `starting` is on no container: it must get one (or be given up), checked with its own grace.
    dead = [f"live session {sid} on c{cid}, not running" for sid, cid in live
            if cid is not None and str(cid) not in running]
    starting = [f"session {sid} still starting" for sid, cid in live if cid is None]
    other = []
    per_container = {}
    for sid, cid in live:
        per_container.setdefault(cid, []).append(sid)
    other += [f"c{cid} serves {len(sids)} sessions" for cid, sids in per_container.items()
              if cid is not None and len(sids) > 1]
    # Routes read before and after the sessions: an open or close in flight between the two reads (its commit and
    # its route change are two steps) shows in one read only; a real difference shows in both.
    before = {(r.host_key, r.session_id, r.address) for r in routes.routes_list()}
    wanted = set(selectors.live_routes())
    after = {(r.host_key, r.session_id, r.address) for r in routes.routes_list()}
    addresses = [address for _, _, address in after if address]
    other += [f"{a} routed for two sessions" for a in {a for a in addresses if addresses.count(a) > 1}]
    extra, missing = (before - wanted) & (after - wanted), (wanted - before) & (wanted - after)
    if extra or missing:
        other.append(f"gateway routes: {sorted(extra)} extra, {sorted(missing)} missing")
    return dead, other, starting


def poll(ctx, load, fault_at, recovered_at):
    """Poll the checks until all hold; returns (seconds from the fault, problems left, dead sessions past grace)."""
    from django.db import close_old_connections, connections

    late_dead, problems = [], ["not checked yet"]
    while True:
        now = time.monotonic()
        try:
            close_old_connections()
            dead, other, starting = state_problems(ctx)
            problems = dead + other + usage_problems(ctx, load)
            with load.lock:
                stale = [k for k in ("open", "gateway", "ingest") if load.last_ok.get(k, 0) <= fault_at]
            problems += [f"no {k} has succeeded since the fault" for k in stale]
        except Exception as exc:  # the fault's own service may still be coming back
            connections.close_all()
            dead, starting, problems = [], [], [f"check failed: {type(exc).__name__}: {exc}"[:300]]
        late = (dead if now - recovered_at > DEAD_SESSION_GRACE else []) + (
            starting if now - recovered_at > STARTING_GRACE else [])
        if late:
            late_dead = late
        if not problems:
            return now - fault_at, [], late_dead
        if now - recovered_at > CONSISTENCY_BUDGET:
            return None, problems, late_dead
        time.sleep(0.5)


# --- faults ----------------------------------------------------------------------------------------------------


def inject(stack, fault):
    """Run one fault and the recovery; returns (fault time, recovery time) in time.monotonic()."""
    fault_at = time.monotonic()
    if fault in stack.processes:
        stack.kill_and_restart(fault)
    elif fault == "redis":
        stack.redis.restart()
    elif fault == "postgres":
        stack.postgres.restart()
    elif fault == "docker":
        stack.dockerd.restart()
    else:
        raise ValueError(f"unknown fault {fault}")
    return fault_at, time.monotonic()


def run_fault(stack, ctx, load, fault, baseline):
    crashed_before = {name: proc.crashes for name, proc in stack.processes.items()}
    load.reset()
    load.start()
    time.sleep(baseline)
    fault_at, recovered_at = inject(stack, fault)
    elapsed, problems, late_dead = poll(ctx, load, fault_at, recovered_at)
    stuck = load.finish()
    from django.db import close_old_connections

    close_old_connections()
    final = usage_problems(ctx, load, final=True)
    counts = dict(load.counts)
    failures = list(problems) + final + [f"still hanging: {stuck}"] * bool(stuck)
    failures += [f"past its grace ({DEAD_SESSION_GRACE:.0f} s on a dead container, {STARTING_GRACE:.0f} s "
                 f"starting): {d}" for d in late_dead[:3]]
    if counts["timeouts"]:
        failures.append(f"{counts['timeouts']} requests got no answer within their timeout")
    crashed = [f"{name} ×{proc.crashes - crashed_before[name]}" for name, proc in stack.processes.items()
               if proc.crashes > crashed_before[name]]
    return {"fault": fault, "recovery_s": round(recovered_at - fault_at, 1), "crashed": crashed,
            "consistent_s": None if elapsed is None else round(elapsed, 1), **counts,
            "events_acknowledged_total": len(load.acked), "events_resent": len(load.retried),
            "statuses": dict(load.statuses), "samples": list(load.samples), "failures": failures[:10],
            "result": "FAIL" if failures else "PASS"}


# --- set-up ------------------------------------------------------------------------------------------------


def seed(stack, seed_from):
    from django.core.management import call_command

    from metering.meters import meter_get
    from metering.tokens import service_token_create
    from tenants.models import Membership, Role, User
    from tenants.services import api_token_create, tenant_onboard
    from workspaces import services
    from workspaces.images import image_ensure
    from workspaces.models import Container, Node, Session, WorkspaceTemplate
    from workspaces.runtime import DockerRuntime

    if not seed_from:
        print("[chaos] migrating the private database (minutes on a loaded machine; --seed-from copies one)",
              file=sys.stderr)
    call_command("migrate", verbosity=0)  # with --seed-from: nothing left to apply
    Session.objects.all().delete()  # whatever the copied database held
    Container.objects.all().delete()
    Node.objects.all().delete()
    runtime = DockerRuntime(stack.dockerd.url, node_name="chaos")
    image_ensure(TINY, runtime=runtime)
    runtime.close()
    Node.objects.create(name="chaos", engine_url=stack.dockerd.url, cpus=64, memory_mb=64 * 1024,
                        max_containers=100)
    WorkspaceTemplate.objects.update(enabled=False)
    template = WorkspaceTemplate.objects.create(slug="chaos-tiny", name="Chaos tiny", image=TINY, internal_port=8080,
                                                cpus="0.10", memory_mb=64, pids_limit=64, warm_min=2, warm_max=2,
                                                idle_timeout_minutes=30, max_containers=50)
    owner = User.objects.create_user("owner@chaos.test", "x" * 20)
    slug = f"chaos-{random.randrange(16 ** 6):06x}"
    tenant = tenant_onboard(name="Chaos", slug=slug, owner=owner, plan="enterprise", synthetic=True, actor="chaos")
    users = []
    for i in range(OPENERS):
        user = User.objects.create_user(f"u{i}@chaos.test", "x" * 20)
        membership = Membership.objects.create(tenant=tenant, user=user, role=Role.MEMBER)
        workspace = services.workspace_create(tenant=tenant, owner=user, name=f"w{i}", template=template)
        _, token = api_token_create(membership=membership, name="chaos", actor=user)
        users.append({"token": token, "workspace": workspace.pk, "holds": {0: "visits", 1: "idle"}.get(i)})
    _, service_token = service_token_create(name="chaos", meters=[METER], tenants=[slug])
    ctx = {"tenant": tenant, "meter": meter_get(METER), "seconds": meter_get("workspace_seconds"),
           "engine_url": stack.dockerd.url, "instance": stack.instance}
    return ctx, users, service_token, slug


def table(rows):
    head = ("fault", "time to consistency", "requests", "errors", "conn errors", "timeouts",
            "also crashed (restarted)", "result")
    lines = [head, *[(r["fault"], "—" if r["consistent_s"] is None else f"{r['consistent_s']:.1f} s",
                      str(r["requests"]), str(r["errors"]), str(r["conn_errors"]), str(r["timeouts"]),
                      ", ".join(r["crashed"]) or "—", r["result"]) for r in rows]]
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in lines]
    out.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seed-from", help="a migrated PostgreSQL database to copy (pg_dump) instead of migrating")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated, in order")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds of load before each fault")
    parser.add_argument("--instance", default=os.environ.get("HEARTH_INSTANCE", "hearth") + "-chaos")
    args = parser.parse_args(argv)
    faults = [f for f in args.faults.split(",") if f]
    if unknown := set(faults) - set(FAULTS):
        parser.error(f"unknown faults {sorted(unknown)}; choose from {','.join(FAULTS)}")
    if os.geteuid() != 0:
        parser.error("the chaos stack needs root (a private dockerd, bind mounts, PostgreSQL as its OS user)")

    root = Path(tempfile.mkdtemp(prefix="hchaos", dir="/tmp"))  # short: unix socket paths are limited
    root.chmod(0o755)  # the postgres OS user reaches its cluster below
    stack = Stack(args.instance, root)
    os.environ.update(stack.env)
    import django

    django.setup()
    rows, started = [], time.monotonic()
    try:
        stack.start_services(args.seed_from)
        ctx, users, service_token, slug = seed(stack, args.seed_from)
        from workspaces import pool

        pool.pool_fill()
        stack.start_processes()
        stack.watchdog_start()
        print(f"[chaos] stack up in {time.monotonic() - started:.0f} s (pids: "
              + ", ".join(f"{n} {p.pid}" for n, p in stack.processes.items()) + ")", file=sys.stderr)
        load = Load(f"http://127.0.0.1:{stack.web_port}/api/v1", stack.gateway_port, users, service_token, slug,
                    prefix=f"chaos-{slug}-")
        for fault in faults:
            try:
                row = run_fault(stack, ctx, load, fault, args.baseline)
            except Exception as exc:  # the stack did not come back: report the row, stop the run
                load.finish()
                rows.append({"fault": fault, "recovery_s": None, "consistent_s": None, **load.counts,
                             "failures": [f"{type(exc).__name__}: {exc}"[:500]], "result": "FAIL"})
                break
            rows.append(row)
            print(f"[chaos] {fault}: {row['result']} consistent after {row['consistent_s']} s "
                  f"(recovered {row['recovery_s']} s); {row['statuses']} {row['failures']}", file=sys.stderr)
    finally:
        from django.db import connections

        connections.close_all()
        errors = stack.close()
        if errors:
            print(f"[chaos] teardown: {errors}", file=sys.stderr)
    print(table(rows))
    passed = bool(rows) and all(r["result"] == "PASS" for r in rows)
    print(json.dumps({"chaos": rows, "passed": passed, "seconds": round(time.monotonic() - started)}))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
