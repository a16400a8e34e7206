"""The simulated population: tenants and users by plan, and when each user opens a workspace, works and leaves.

The behaviour below is an assumption, not a measurement (Hearth has no production traffic yet): it is chosen so that
1,000 signed-in users give 5-10 people working at once at the weekday peak, the issue's default workload. The
plans' limits (seats, daily minutes, monthly hours, idle timeouts, longest session, concurrency) are not here: they
are read from the Plan rows, the one place they live.
"""
import math
import random
from dataclasses import dataclass

DAY = 86400.0
HOUR = 3600.0

DEFAULT_PLAN_MIX = {"free": 0.70, "starter": 0.15, "pro": 0.10, "team": 0.05}
# Users per tenant of a plan without a seat limit (enterprise).
SEATS_WITHOUT_LIMIT = 5


@dataclass(frozen=True)
class Behaviour:
    """How the users of one plan work (assumed): on a weekday a user works with probability `active`, opens
    1 + Poisson(`extra_sessions`) times, each time working a log-normal time (median `work_median_min` minutes,
    shape `work_sigma`), and then closes the tab with probability `closes` (else leaves it open: idle reclaim ends
    the session). Between two visits a log-normal break (median `break_median_min`)."""

    active: float
    extra_sessions: float
    work_median_min: float
    work_sigma: float = 0.7
    closes: float = 0.4
    break_median_min: float = 60.0


BEHAVIOURS = {
    "free": Behaviour(active=0.02, extra_sessions=0.3, work_median_min=15, work_sigma=0.6, closes=0.3),
    "starter": Behaviour(active=0.04, extra_sessions=0.4, work_median_min=30),
    "pro": Behaviour(active=0.07, extra_sessions=0.6, work_median_min=45, closes=0.5),
    "team": Behaviour(active=0.105, extra_sessions=0.8, work_median_min=60, closes=0.5),
    "enterprise": Behaviour(active=0.105, extra_sessions=0.8, work_median_min=60, closes=0.5),
}
DEFAULT_BEHAVIOUR = BEHAVIOURS["pro"]
WEEKEND_ACTIVITY = 0.3  # a weekend day's share of a weekday's activity


# The daily arrival curve: when the first open of a user's day happens, in hours of the day. Weekdays peak in the
# late morning and mid-afternoon (one time zone); a flat floor stands for early and late workers.
WEEKDAY_CURVE = ((0.45, 10.5, 1.5), (0.40, 15.0, 1.7), (0.15, None, None))  # (weight, mean, sd); None: uniform 7-23 h
WEEKEND_CURVE = ((0.70, 14.0, 3.0), (0.30, None, None))


@dataclass(frozen=True)
class Population:
    tenant_plans: list  # per tenant: its Plan
    user_tenants: list  # per user: the index of its tenant
    visits: list  # sorted Visit

    def users_of(self, slug):
        return sum(1 for t in self.user_tenants if self.tenant_plans[t].slug == slug)


@dataclass(frozen=True, order=True)
class Visit:
    at: float  # seconds from the start (a Monday, 00:00)
    user: int
    work_s: float  # how long the user works from the open
    closes: bool  # the user closes the tab at the end (else leaves it idle)


def plan_mix_parse(text, *, plans):
    """'free=0.7,starter=0.15' -> {slug: share} summing to 1. ValueError with a message on bad input."""
    mix = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        slug, sep, value = part.partition("=")
        slug = slug.strip()
        if not sep:
            raise ValueError(f"'{part}' is not plan=share")
        if slug not in plans:
            raise ValueError(f"unknown plan '{slug}' (plans: {', '.join(sorted(plans))})")
        try:
            share = float(value)
        except ValueError:
            raise ValueError(f"'{value}' is not a number (in '{part}')") from None
        if not math.isfinite(share) or share < 0:
            raise ValueError(f"the share of '{slug}' must be a number ≥ 0, not {value}")
        mix[slug] = mix.get(slug, 0.0) + share
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("the plan mix is empty: give at least one plan a share above 0")
    return {slug: share / total for slug, share in mix.items()}


def _users_per_plan(users, mix):
    """Largest remainder: the counts add up to `users`."""
    exact = {slug: users * share for slug, share in mix.items()}
    counts = {slug: int(value) for slug, value in exact.items()}
    for slug in sorted(exact, key=lambda s: (counts[s] - exact[s], s))[: users - sum(counts.values())]:
        counts[slug] += 1
    return counts


def _start_hour(rng, curve):
    pick, acc = rng.random(), 0.0
    for weight, mean, sd in curve:
        acc += weight
        if pick <= acc or weight == curve[-1][0]:
            if mean is None:
                return rng.uniform(7, 23)
            return min(max(rng.gauss(mean, sd), 0.0), 23.99)
    raise ValueError("empty arrival curve")


def population_generate(*, users, days, mix, plans, seed, behaviours=None):
    """Tenants and users in `mix` (plan slug -> share; `plans`: slug -> Plan) and their visits over `days` days."""
    rng = random.Random(f"population:{seed}")
    behaviours = behaviours or BEHAVIOURS
    tenant_plans, user_tenants = [], []
    for slug, count in sorted(_users_per_plan(users, mix).items()):
        plan = plans[slug]
        seats = plan.seats or SEATS_WITHOUT_LIMIT
        for i in range(count):
            if i % seats == 0:
                tenant_plans.append(plan)
            user_tenants.append(len(tenant_plans) - 1)
    visits = []
    for user, tenant in enumerate(user_tenants):
        behaviour = behaviours.get(tenant_plans[tenant].slug, DEFAULT_BEHAVIOUR)
        for day in range(days):
            weekend = day % 7 >= 5
            if rng.random() >= behaviour.active * (WEEKEND_ACTIVITY if weekend else 1.0):
                continue
            at = day * DAY + _start_hour(rng, WEEKEND_CURVE if weekend else WEEKDAY_CURVE) * HOUR
            for _ in range(1 + _poisson(rng, behaviour.extra_sessions)):
                if at >= (day + 1) * DAY:
                    break
                work = min(max(rng.lognormvariate(math.log(behaviour.work_median_min * 60), behaviour.work_sigma),
                               120.0), 6 * HOUR)
                visits.append(Visit(at=at, user=user, work_s=work, closes=rng.random() < behaviour.closes))
                at += work + rng.lognormvariate(math.log(behaviour.break_median_min * 60), 0.6)
    visits.sort()
    return Population(tenant_plans=tenant_plans, user_tenants=user_tenants, visits=visits)


def _poisson(rng, mean):
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k
