"""The discrete-event replay of a population through Hearth's pool policy (one template on one node).

What is Hearth's own code here, called as the real stack calls it: the warm target (`pool.demand.target_decide`, every
pool tick and at every refill) and the surplus release (`pool.demand.surplus`), a node's room
(`pool.placement.NodeLoad.room_for`), the plan's longest session (`tenants.policy.session_ends_at`), the tenant's
concurrency limit (`tenants.policy.concurrent_workspaces_check`) and the quota's end of running sessions
(`workspaces.sessions.quota_limit_at`). What is modelled after the code, step by step: the claim (a WARM container if
any, else a cold start in a provisioning slot or the template's line of cold opens, first come first served), the
refill (`pool_fill`: top up to the target, as many starts as free slots, after each claim's nudge and every tick),
the reclaim tick (longest session, idle past the shorter of the template's and the plan's timeout, quota) and the
entitlement check before an open (the plan's daily and monthly allowance). The runtime is `runtime.RuntimeModel`.
"""
import heapq
import random
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from tenants import policy
from tenants.exceptions import Conflict
from workspaces.pool import demand
from workspaces.pool.placement import NodeLoad
from workspaces.sessions import quota_limit_at

DAY = 86400.0
EPOCH = datetime(2026, 1, 5, tzinfo=UTC)  # a Monday: simulated time 0


@dataclass(frozen=True)
class PolicyInputs:
    """The pool policy's knobs and the stack's periods, as the command reads them from settings and the template."""

    bounds: demand.Bounds
    lead_time_s: float
    window_s: float = 300.0
    lookahead_s: float = 900.0
    pool_tick_s: float = 15.0  # the beat's workspaces-pool-fill
    reclaim_tick_s: float = 30.0  # the beat's workspaces-reclaim
    refill_delay_s: float = 0.25  # a claim's nudge: pool_fill enqueued after the nudger's coalescing
    provision_concurrency: int = 16  # WORKSPACES_PROVISION_CONCURRENCY
    line_poll_s: float = 0.05  # WORKSPACES_POOL_POLL_INTERVAL: the head of the cold line looks this often


@dataclass
class _Session:
    user: int
    tenant: int
    plan: object
    claimed_at: float
    metered_until: float
    ends_at: float | None
    working: bool = True
    last_activity: float = 0.0
    ended: bool = False


@dataclass
class Result:
    """What a run measured (seconds); `report.summarize` turns it into figures and cost."""

    users: int
    days: int
    waits: list = field(default_factory=list)  # (open time, wait s, cold)
    refused: dict = field(default_factory=dict)  # reason -> opens refused
    resumes: int = 0
    ended: dict = field(default_factory=dict)  # reason -> sessions ended
    claimed_s_by_plan: dict = field(default_factory=dict)  # plan slug -> container-seconds claimed
    metered_s_by_plan: dict = field(default_factory=dict)  # plan slug -> seconds metered (billed time)
    warm_s: float = 0.0  # container-seconds WARM or starting for the pool
    cold_starting_s: float = 0.0  # container-seconds of cold starts (the user waits: part of their session)
    idle_tail_s: float = 0.0  # container-seconds of sessions between the user's last activity and the idle reclaim
    peak_containers: int = 0
    peak_working: int = 0
    series: list = field(default_factory=list)  # per pool tick: (t, live sessions, working, warm+starting, target)
    decisions: list = field(default_factory=list)  # per pool tick: (t, TargetDecision)
    plans: dict = field(default_factory=dict)  # slug -> Plan


class Simulation:
    """One run. `template` and `node` need the fields the real ones have (cpus, memory_mb, max_containers,
    idle_timeout_minutes; node: max_containers, cpus, memory_mb)."""

    def __init__(self, *, population, template, node, policy_inputs, runtime, days, seed, trace=True):
        self.pop, self.template, self.node = population, template, node
        self.policy, self.runtime, self.days, self.trace = policy_inputs, runtime, days, trace
        self.rng = random.Random(f"runtime:{seed}")
        self.events, self.seq = [], 0
        self.opens = []  # sorted open times: what target_decide reads
        self.warm = self.starting_pool = self.starting_cold = self.claimed = 0
        self.line = deque()  # cold opens waiting: (arrival, user)
        self.sessions = {}  # user -> live _Session
        self.tenant_live = {}  # tenant -> live sessions
        self.used_day, self.used_month = {}, {}  # tenant -> metered seconds (day index -> s; s this month)
        self.last_t = 0.0
        self.out = Result(users=len(population.user_tenants), days=days,
                          plans={p.slug: p for p in population.tenant_plans})

    # --- the event queue ---------------------------------------------------------------------------------------

    def at(self, t, kind, *args):
        self.seq += 1
        heapq.heappush(self.events, (t, self.seq, kind, args))

    def run(self):
        end = self.days * DAY
        for visit in self.pop.visits:
            self.at(visit.at, "arrive", visit)
        self.at(0.0, "pool_tick")
        self.at(self.policy.reclaim_tick_s, "reclaim_tick")
        while self.events:
            t, _, kind, args = heapq.heappop(self.events)
            if t > end:
                break
            self._advance(t)
            getattr(self, f"_on_{kind}")(t, *args)
        self._advance(end)
        for session in list(self.sessions.values()):  # still open at the end: metered to the end
            self._meter(session, end)
        return self.out

    def _advance(self, t):
        """Integrate container-seconds up to `t` (counts change only at events)."""
        dt = t - self.last_t
        if dt > 0:
            self.out.warm_s += (self.warm + self.starting_pool) * dt
            self.out.cold_starting_s += self.starting_cold * dt
            for session in self.sessions.values():
                slug = session.plan.slug
                self.out.claimed_s_by_plan[slug] = self.out.claimed_s_by_plan.get(slug, 0.0) + dt
            self.last_t = t

    def _containers(self):
        return self.warm + self.starting_pool + self.starting_cold + self.claimed

    def _peak(self):
        self.out.peak_containers = max(self.out.peak_containers, self._containers())

    # --- capacity, slots, the target ---------------------------------------------------------------------------

    def _room(self):
        n = self._containers()
        load = NodeLoad(node=self.node, containers=n, cpus=n * float(self.template.cpus),
                        memory_mb=n * self.template.memory_mb)
        return n < self.template.max_containers and load.room_for(self.template)

    def _free_slots(self):
        return self.policy.provision_concurrency - self.starting_pool - self.starting_cold

    def _decide(self, t):
        p = self.policy
        return demand.target_decide(bounds=p.bounds, opens=self.opens, now=t, lead_time_s=p.lead_time_s,
                                    window_s=p.window_s, lookahead_s=p.lookahead_s)

    # --- events ------------------------------------------------------------------------------------------------

    def _on_arrive(self, t, visit):
        user = visit.user
        session = self.sessions.get(user)
        if session is not None:  # the tab was still open: a resume, no new container
            self.out.resumes += 1
            self._work(t, session, visit)
            return
        tenant = self.pop.user_tenants[user]
        plan = self.pop.tenant_plans[tenant]
        reason = self._refusal(t, tenant, plan)
        if reason:
            self.out.refused[reason] = self.out.refused.get(reason, 0) + 1
            return
        self.opens.append(t)
        self.tenant_live[tenant] = self.tenant_live.get(tenant, 0) + 1  # counted from the open (its row)
        if self.warm > 0 and not self.line:
            self._claim_warm(t, t, visit, cold=False)
        else:
            self.line.append((t, visit))
            self._serve_line(t)

    def _refusal(self, t, tenant, plan):
        """Why an open is refused now (the entitlement check and the concurrency limit), or None."""
        left = self._allowance_left(t, tenant, plan)
        if left is not None and left <= 0:
            return "quota"
        try:
            policy.concurrent_workspaces_check(tenant=SimpleNamespace(plan=plan),
                                               running=self.tenant_live.get(tenant, 0))
        except Conflict:
            return "concurrency"
        if not self._room() and self.warm == 0:
            return "no_capacity"
        return None

    def _allowance_left(self, t, tenant, plan):
        """Seconds of workspace time the tenant has left (None: unlimited): the daily allowance always stops, the
        monthly one only without paid overage (metering.entitlements.entitlement_check's order)."""
        left = []
        if plan.daily_minutes is not None:
            left.append(plan.daily_minutes * 60 - self.used_day.get((tenant, int(t // DAY)), 0.0))
        if plan.monthly_hours is not None and not plan.allows_overage:
            left.append(plan.monthly_hours * 3600 - self.used_month.get(tenant, 0.0))
        return min(left) if left else None

    def _claim_warm(self, t, arrival, visit, *, cold, delay=0.0):
        self.warm -= 1
        wait = (t - arrival) + delay + self.runtime.warm_open.sample(self.rng)
        self._session_start(t, arrival, visit, wait=wait, cold=cold)
        self.at(t + self.policy.refill_delay_s, "fill")

    def _serve_line(self, t):
        """The head of the line takes a WARM container, else starts its own in a free slot, first come first
        served; the next moves up as soon as it has one."""
        while self.line:
            arrival, visit = self.line[0]
            if self.warm > 0:
                # The head sees a container that turned WARM at its next look (every line_poll_s): half of it on
                # average.
                self.line.popleft()
                self._claim_warm(t, arrival, visit, cold=True, delay=self.policy.line_poll_s / 2)
            elif self._free_slots() > 0 and self._room():
                self.line.popleft()
                self.starting_cold += 1
                self._peak()
                duration = self.runtime.start_duration(self.rng, in_flight=self.starting_pool + self.starting_cold)
                self.at(t + duration, "cold_ready", arrival, visit)
            else:
                return

    def _on_cold_ready(self, t, arrival, visit):
        self.starting_cold -= 1
        wait = (t - arrival) + self.runtime.warm_open.sample(self.rng)  # + the claim, bind and token
        self._session_start(t, arrival, visit, wait=wait, cold=True)
        self._serve_line(t)
        self._fill(t)

    def _session_start(self, t, arrival, visit, *, wait, cold):
        self.claimed += 1
        self._peak()
        tenant = self.pop.user_tenants[visit.user]
        plan = self.pop.tenant_plans[tenant]
        ends = policy.session_ends_at(plan=plan, started_at=EPOCH + timedelta(seconds=t))
        session = _Session(user=visit.user, tenant=tenant, plan=plan, claimed_at=t, metered_until=t,
                           ends_at=None if ends is None else (ends - EPOCH).total_seconds(), last_activity=t)
        self.sessions[visit.user] = session
        self.out.waits.append((arrival, wait, cold))
        self._work(t, session, visit)
        working = sum(1 for s in self.sessions.values() if s.working)
        self.out.peak_working = max(self.out.peak_working, working)

    def _work(self, t, session, visit):
        session.working, session.last_activity = True, t
        self.at(t + visit.work_s, "work_end", session, visit.closes)

    def _on_work_end(self, t, session, closes):
        if session.ended:
            return
        session.working, session.last_activity = False, t
        if closes:
            self._end(t, session, "closed")

    def _on_fill(self, t):
        self._fill(t)

    def _fill(self, t):
        """pool_fill: top the pool up to the warm target, as many starts at once as free slots (the line of cold
        opens first: its head polls every 50 ms, a fill waiting for a slot every 0.25 s)."""
        missing = self._decide(t).target - (self.warm + self.starting_pool)
        while missing > 0 and not self.line and self._free_slots() > 0 and self._room():
            self.starting_pool += 1
            missing -= 1
            self._peak()
            duration = self.runtime.start_duration(self.rng, in_flight=self.starting_pool + self.starting_cold)
            self.at(t + duration, "pool_ready")

    def _on_pool_ready(self, t):
        self.starting_pool -= 1
        self.warm += 1
        self._serve_line(t)
        self._fill(t)

    def _on_pool_tick(self, t):
        decision = self._decide(t)
        release = demand.surplus(warm=self.warm, target=decision.target)
        self.warm -= release
        self._fill(t)
        if self.trace:
            self.out.decisions.append((t, decision))
        working = sum(1 for s in self.sessions.values() if s.working)
        self.out.series.append((t, len(self.sessions), working, self.warm + self.starting_pool, decision.target))
        self.at(t + self.policy.pool_tick_s, "pool_tick")

    def _on_reclaim_tick(self, t):
        """sessions_reclaim: the longest session, idle past the timeout, then the quota of each tenant."""
        for session in list(self.sessions.values()):
            idle_s = 60 * min(self.template.idle_timeout_minutes, session.plan.idle_timeout_minutes)
            if session.ends_at is not None and session.ends_at <= t:
                self._end(t, session, "max_length", metered_to=session.ends_at)
            elif not session.working and session.last_activity < t - idle_s:
                self.out.idle_tail_s += t - session.last_activity
                self._end(t, session, "idle")
        by_tenant = {}
        for session in self.sessions.values():
            by_tenant.setdefault(session.tenant, []).append(session)
        for tenant, sessions in by_tenant.items():
            left = self._allowance_left(t, tenant, sessions[0].plan)
            limit_at = None
            if left is not None:
                marks = [EPOCH + timedelta(seconds=s.metered_until) for s in sessions]
                limit_at = (quota_limit_at(marks, left) - EPOCH).total_seconds()
            for session in sessions:
                if limit_at is not None and limit_at <= t:
                    self._end(t, session, "quota", metered_to=limit_at)
                else:
                    self._meter(session, t)
        self.at(t + self.policy.reclaim_tick_s, "reclaim_tick")

    def _meter(self, session, until):
        start = session.metered_until
        if until <= start:
            return
        seconds = until - start
        key = (session.tenant, int(start // DAY))
        self.used_day[key] = self.used_day.get(key, 0.0) + seconds
        self.used_month[session.tenant] = self.used_month.get(session.tenant, 0.0) + seconds
        slug = session.plan.slug
        self.out.metered_s_by_plan[slug] = self.out.metered_s_by_plan.get(slug, 0.0) + seconds
        session.metered_until = until

    def _end(self, t, session, reason, metered_to=None):
        """session_end: metered (to `metered_to` at a limit), the container removed, the pool refilled."""
        self._meter(session, min(metered_to or t, t))
        session.ended = True
        del self.sessions[session.user]
        self.tenant_live[session.tenant] -= 1
        self.claimed -= 1
        self.out.ended[reason] = self.out.ended.get(reason, 0) + 1
        self.at(t + self.policy.refill_delay_s, "fill")


def simulate(*, population, template, node, policy_inputs, runtime, days, seed, trace=True):
    return Simulation(population=population, template=template, node=node, policy_inputs=policy_inputs,
                      runtime=runtime, days=days, seed=seed, trace=trace).run()
