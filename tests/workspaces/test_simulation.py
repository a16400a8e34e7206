"""The capacity simulator (workspaces/simulation/, `manage.py simulate`): determinism, figures checked by hand, the
Free plan's quota, the pool following demand through target_decide, the JSON keys and bad options."""
import io
import json
import random
from types import SimpleNamespace

import pytest
from django.core.management import CommandError, call_command

from billing.models import CostRates
from tenants.models import Plan
from workspaces.models import WorkspaceTemplate
from workspaces.pool.demand import Bounds, TargetDecision
from workspaces.simulation import policy_inputs, simulation_run
from workspaces.simulation.engine import DAY, simulate
from workspaces.simulation.population import Population, Visit, plan_mix_parse
from workspaces.simulation.report import JSON_KEYS, cost_breakdown, plot_svg, summarize
from workspaces.simulation.runtime import Quantiles, RuntimeModel, runtime_load, runtime_refresh

pytestmark = pytest.mark.django_db

NODE = SimpleNamespace(max_containers=100, cpus=128, memory_mb=128 * 1024)
RATES = CostRates()  # the model's default unit prices, unsaved
# A runtime with fixed times, so that figures can be checked by hand.
FIXED = RuntimeModel(warm_open=Quantiles.of({"p0": 0.005, "p100": 0.005}),
                     cold_start=Quantiles.of({"p0": 1.0, "p100": 1.0}), cpu_per_start=0.5, cores=2)


def plans():
    return {plan.slug: plan for plan in Plan.objects.all()}


def template(**fields):
    return WorkspaceTemplate(slug="sim", **fields)  # the model's defaults: 1 CPU, idle timeout 30 min, 50 at most


def one_user(plan_slug, *visits):
    return Population(tenant_plans=[plans()[plan_slug]], user_tenants=[0], visits=sorted(visits))


ONE = Bounds(1, 1)


def run(population, *, bounds=ONE, days=1, tmpl=None, runtime=FIXED, **inputs):
    tmpl = tmpl or template()
    inputs = policy_inputs(template=tmpl, runtime=runtime, bounds=bounds, **inputs)
    return simulate(population=population, template=tmpl, node=NODE, policy_inputs=inputs, runtime=runtime,
                    days=days, seed=1)


def test_same_seed_same_figures_and_another_seed_others():
    first = simulation_run(users=200, days=2, seed=7, node=NODE, rates=RATES, trace=False).figures
    again = simulation_run(users=200, days=2, seed=7, node=NODE, rates=RATES, trace=False).figures
    other = simulation_run(users=200, days=2, seed=8, node=NODE, rates=RATES, trace=False).figures
    for figures in (first, again, other):
        figures.pop("wall_s")
    assert first == again
    assert first != other


def test_one_user_one_session_by_hand():
    # A Pro user opens at 10:00:07 (between two pool ticks) against a pool of exactly one, works 30 minutes and
    # closes the tab.
    at = 10 * 3600 + 7
    result = run(one_user("pro", Visit(at=at, user=0, work_s=1800, closes=True)))
    assert result.waits == [(at, 0.005, False)]  # a warm claim: the claim's own time, not a start
    assert result.claimed_s_by_plan == {"pro": pytest.approx(1800)}
    assert result.metered_s_by_plan == {"pro": pytest.approx(1800)}
    # The pool holds one container all day (warm or starting), but for the refill nudge's 0.25 s after the claim.
    assert result.warm_s == pytest.approx(DAY - 0.25)
    assert result.peak_containers == 2  # the claimed one and its replacement starting
    assert result.ended == {"closed": 1}
    figures = summarize(result, rates=RATES, storage_gib_per_user=0)
    assert figures["container_hours"] == pytest.approx(24.5, abs=0.01)
    assert figures["naive_container_hours"] == 24
    assert figures["cold_start_rate"] == 0
    costs = cost_breakdown(result, rates=RATES, storage_gib_per_user=0)
    assert float(costs["sessions"]) == pytest.approx(1800 * 0.000024)  # Pro: 1 vCPU (the rates' default)
    # The warm line's share: a day of one container is 1/2 of the $30 line's two containers, for one day.
    assert float(costs["warm_pool"]) == pytest.approx(30 / 2 / (365.25 / 12), rel=1e-4)


def test_an_empty_pool_makes_a_cold_start_and_contended_starts_stretch():
    result = run(one_user("pro", Visit(at=3600, user=0, work_s=600, closes=True)), bounds=Bounds(0, 0))
    assert result.waits == [(3600, pytest.approx(1.005), True)]  # the start (1 s alone) + the claim
    assert FIXED.start_duration(random.Random(), in_flight=2) == 1.0
    # 10 starts on 2 cores: each start's 0.5 CPU-second is shared by five starts per core.
    assert FIXED.start_duration(random.Random(), in_flight=10) == pytest.approx(1.0 + 0.5 * 4)


def test_the_free_plans_daily_minutes_end_the_session():
    free = plans()["free"]
    assert free.daily_minutes == 30  # the plan's data, not a copy in the simulator
    result = run(one_user("free", Visit(at=9 * 3600, user=0, work_s=3 * 3600, closes=True),
                          Visit(at=15 * 3600, user=0, work_s=600, closes=True)))
    assert result.ended == {"quota": 1}
    assert result.metered_s_by_plan["free"] == pytest.approx(30 * 60)  # metered to the limit exactly
    # The container goes at the reclaim tick after the limit (every 30 s).
    assert 30 * 60 <= result.claimed_s_by_plan["free"] <= 30 * 60 + 30
    assert result.refused == {"quota": 1}  # the afternoon's open: nothing left today


def test_idle_reclaim_after_the_shorter_timeout():
    # Free's idle timeout (10 min) is shorter than the template's (30): the tab left open ends 10-10.5 min later.
    result = run(one_user("free", Visit(at=3600, user=0, work_s=300, closes=False)))
    assert result.ended == {"idle": 1}
    assert 300 + 600 <= result.claimed_s_by_plan["free"] <= 300 + 600 + 30
    assert result.idle_tail_s == pytest.approx(result.claimed_s_by_plan["free"] - 300)


def test_the_pool_grows_with_demand_through_target_decide():
    # 60 users open over two minutes, faster and faster, on a quiet day; the pool's bounds are 1-20.
    starts = [3 * 3600 + 120 * (i / 60) ** 0.5 for i in range(60)]
    population = Population(tenant_plans=[plans()["team"]] * 60, user_tenants=list(range(60)),
                            visits=[Visit(at=t, user=i, work_s=1800, closes=True) for i, t in enumerate(starts)])
    roomy = template(max_containers=200)
    result = run(population, bounds=Bounds(1, 20), lead_time_s=20.0, tmpl=roomy)
    decisions = [d for _, d in result.decisions]
    assert all(isinstance(d, TargetDecision) for d in decisions)
    assert decisions[0].target == 1 and decisions[0].reason == "minimum"
    during = [(t, d) for t, d in result.decisions if 3 * 3600 < t <= 3 * 3600 + 180]
    assert max(d.target for _, d in during) >= 5
    assert any(d.reason == "recent demand" for _, d in during)
    pool = [row[3] for row in result.series if 3 * 3600 < row[0] <= 3 * 3600 + 180]
    assert max(pool) >= 4  # the pool itself followed, not only the target
    late = [d.target for t, d in result.decisions if t > 6 * 3600]
    assert set(late) == {1}  # and shrank back to the minimum once demand fell
    assert not result.refused
    # A fixed pool of one serves fewer of the same opens warm.
    hits = sum(1 for *_, cold in result.waits if not cold)
    fixed = run(population, bounds=ONE, lead_time_s=20.0, tmpl=roomy)
    assert hits > sum(1 for *_, cold in fixed.waits if not cold) + 10


def test_json_has_the_issues_keys(tmp_path):
    out = io.StringIO()
    plot = tmp_path / "day.svg"
    call_command("simulate", "--users", "100", "--days", "1", "--seed", "3", "--json", "--plot", str(plot),
                 stdout=out)
    figures = json.loads(out.getvalue())
    assert set(JSON_KEYS) <= set(figures)
    assert figures["users"] == 100 and figures["days"] == 1 and figures["naive_container_hours"] == 2400
    assert plot.read_text().startswith("<svg") and "live sessions" in plot.read_text()


def test_the_table_names_the_targets():
    out = io.StringIO()
    call_command("simulate", "--users", "50", "--days", "1", "--warm-min", "1", "--warm-max", "3", stdout=out)
    text = out.getvalue()
    assert "bounds 1–3" in text and "[target p99 < 1 s]" in text and "cost per user-month" in text


@pytest.mark.parametrize(("argv", "message"), [
    (["--users", "-5"], "--users must be at least 1"),
    (["--days", "0"], "--days must be between"),
    (["--plan-mix", "free=0.5,gold=0.5"], "unknown plan 'gold'"),
    (["--plan-mix", "free=lots"], "'lots' is not a number"),
    (["--plan-mix", "free=-1,pro=2"], "must be a number ≥ 0"),
    (["--plan-mix", "free"], "is not plan=share"),
    (["--plan-mix", "free=0"], "the plan mix is empty"),
    (["--warm-min", "4", "--warm-max", "2"], "--warm-min (4) is above --warm-max (2)"),
    (["--warm-min", "-1"], "must not be negative"),
    (["--lead-time", "-1"], "--lead-time must not be negative"),
    (["--idle-timeout", "0"], "--idle-timeout must be at least 1 minute"),
    (["--template", "nope"], "no template 'nope'"),
    (["--runtime", "vax"], "unknown runtime profile 'vax'"),
    (["--refresh-from", "/nonexistent.json"], "not a bench JSON output"),
])
def test_bad_options_get_a_command_error(argv, message):
    with pytest.raises(CommandError) as error:
        call_command("simulate", *argv, stdout=io.StringIO())
    assert message in str(error.value)


def test_plan_mix_is_normalised():
    assert plan_mix_parse("free=7,pro=3", plans=plans()) == {"free": 0.7, "pro": 0.3}


def test_refresh_from_bench_output(tmp_path):
    claim = tmp_path / "claim.json"
    claim.write_text("noise\n" + json.dumps({
        "cpus": 4, "sequential_warm": {"n": 30, "p50_ms": 2.0, "p95_ms": 3.0, "p99_ms": 4.0, "max_ms": 5.0},
        "cold_start": {"n": 10, "p50_ms": 500.0, "p95_ms": 600.0, "p99_ms": 700.0, "max_ms": 800.0}}) + "\n| table")
    phases = tmp_path / "phases.json"
    phases.write_text(json.dumps({"cpus": 2, "rows": [{"parallel": 10, "engine_cpu_ms_each": 210.0}]}))
    runtime = runtime_load("tiny", refresh_from=[claim, phases])
    assert runtime.cold_start.quantile(50) == pytest.approx(0.5)
    assert runtime.warm_open.quantile(99) == pytest.approx(0.004)
    assert runtime.cpu_per_start == pytest.approx(0.21)
    assert runtime.cores == 2
    empty = tmp_path / "empty.json"
    empty.write_text("{}")
    with pytest.raises(ValueError, match="holds no figure"):
        runtime_refresh(runtime, empty)


def test_a_week_of_a_thousand_users_is_fast():
    run = simulation_run(users=1000, days=7, seed=1, node=NODE, rates=RATES)
    assert run.figures["wall_s"] <= 60
    assert 5 <= run.figures["peak_working"] <= 12  # the default workload: 5-10 working at once at the peak
    assert "<svg" in plot_svg(run.result)
