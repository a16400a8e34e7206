"""The capacity simulator (issue 16): a population of tenants and users replayed through the pool's own policy over a
simulated runtime; `manage.py simulate` and the pool page's what-if form run it through `simulation_run`.

population.py (who opens when) · engine.py (the discrete-event replay) · runtime.py (measured start times and CPU)
· report.py (figures, cost, table, SVG). docs/CAPACITY.md describes the model.
"""
import os
import time
from dataclasses import dataclass
from types import SimpleNamespace

from django.conf import settings

from workspaces.pool import demand
from workspaces.simulation.engine import PolicyInputs, simulate
from workspaces.simulation.population import DEFAULT_PLAN_MIX, population_generate
from workspaces.simulation.report import summarize
from workspaces.simulation.runtime import runtime_load

# Without the pool branch's template bounds (warm_min / warm_max), the fixed warm target is the minimum and this the
# maximum.
DEFAULT_STORAGE_GIB_PER_USER = 0.05  # assumed: a small project and the IDE's settings (50 MiB)


def beat_period(name, default):
    entry = getattr(settings, "CELERY_BEAT_SCHEDULE", {}).get(name)
    run_every = getattr(entry and entry.get("schedule"), "run_every", None)
    return run_every.total_seconds() if run_every is not None else default


def template_bounds(template):
    """The template's warm bounds as staff set them (`warm_min`, `warm_max`)."""
    return demand.Bounds(minimum=int(template.warm_min), maximum=int(max(template.warm_min, template.warm_max)))


def default_node():
    """The first usable node, else one like node_ensure_default would register (not saved)."""
    from workspaces.pool.placement import _host_memory_mb, usable_nodes

    node = usable_nodes().first()
    if node is not None:
        return node
    return SimpleNamespace(max_containers=100, cpus=(os.cpu_count() or 2) * settings.WORKSPACES_LOCAL_CPU_OVERCOMMIT,
                           memory_mb=_host_memory_mb() * settings.WORKSPACES_LOCAL_MEMORY_OVERCOMMIT)


def policy_inputs(*, template, runtime, bounds=None, lead_time_s=None, window_s=None, lookahead_s=None):
    """The policy's inputs from settings, the beat schedule and the template; overrides where given."""
    from workspaces.pool.refill import REFILL_COALESCE_SECONDS

    refill_delay = REFILL_COALESCE_SECONDS
    return PolicyInputs(
        bounds=bounds or template_bounds(template),
        lead_time_s=lead_time_s if lead_time_s is not None else runtime.lead_time() + refill_delay,
        window_s=window_s if window_s is not None else 300.0,
        lookahead_s=lookahead_s if lookahead_s is not None else 900.0,
        pool_tick_s=beat_period("workspaces-pool-fill", 15.0),
        reclaim_tick_s=beat_period("workspaces-reclaim", 30.0),
        refill_delay_s=refill_delay,
        provision_concurrency=max(1, int(settings.WORKSPACES_PROVISION_CONCURRENCY)),
        line_poll_s=settings.WORKSPACES_POOL_POLL_INTERVAL,
    )


@dataclass
class Run:
    figures: dict
    result: object
    inputs: PolicyInputs
    runtime: object


def simulation_run(*, users=1000, days=7, plan_mix=None, seed=1, template=None, node=None, bounds=None,
                   lead_time_s=None, window_s=None, lookahead_s=None, runtime=None, refresh_from=(), rates=None,
                   storage_gib_per_user=DEFAULT_STORAGE_GIB_PER_USER, plans=None, trace=True):
    """Generate the population, replay it, and summarize. Reads plans, the template, the node and the cost rates
    from the database unless given."""
    from billing.costs import cost_rates
    from tenants.models import Plan
    from workspaces.models import WorkspaceTemplate

    started = time.perf_counter()
    plans = plans or {plan.slug: plan for plan in Plan.objects.all()}
    template = template or WorkspaceTemplate.objects.filter(enabled=True).order_by("pk").first()
    if template is None:
        template = WorkspaceTemplate(slug="default")  # the model's defaults
    runtime = runtime or runtime_load(refresh_from=refresh_from)
    inputs = policy_inputs(template=template, runtime=runtime, bounds=bounds, lead_time_s=lead_time_s,
                           window_s=window_s, lookahead_s=lookahead_s)
    population = population_generate(users=users, days=days, mix=plan_mix or DEFAULT_PLAN_MIX, plans=plans,
                                      seed=seed)
    result = simulate(population=population, template=template, node=node or default_node(), policy_inputs=inputs,
                      runtime=runtime, days=days, seed=seed, trace=trace)
    figures = summarize(result, rates=rates or cost_rates(), storage_gib_per_user=storage_gib_per_user,
                        wall_s=time.perf_counter() - started)
    return Run(figures=figures, result=result, inputs=inputs, runtime=runtime)
