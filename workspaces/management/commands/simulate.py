"""`manage.py simulate`: replay a simulated population through the pool policy and report capacity, waits and cost
(docs/CAPACITY.md)."""
import copy
import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from tenants.models import Plan
from workspaces.models import WorkspaceTemplate
from workspaces.pool.demand import Bounds
from workspaces.simulation import simulation_run, template_bounds
from workspaces.simulation.population import DEFAULT_PLAN_MIX, plan_mix_parse
from workspaces.simulation.report import plot_svg, table
from workspaces.simulation.runtime import DEFAULT_PROFILE, RuntimeDataError, runtime_load

DEFAULT_MIX_TEXT = ",".join(f"{slug}={share}" for slug, share in DEFAULT_PLAN_MIX.items())


class Command(BaseCommand):
    help = ("Simulate --users signed-in users over --days days through the warm pool's policy (the demand target, "
            "claims, refills, idle reclaim, quotas, node capacity) and report container-hours, open waits, the "
            "cold-start rate and the cost per user-month (docs/CAPACITY.md).")

    def add_arguments(self, parser):
        parser.add_argument("--users", type=int, default=1000, help="signed-in users (default 1000)")
        parser.add_argument("--days", type=int, default=7, help="days simulated, from a Monday (default 7)")
        parser.add_argument("--plan-mix", default=DEFAULT_MIX_TEXT,
                            help=f"share of users per plan slug (default {DEFAULT_MIX_TEXT})")
        parser.add_argument("--seed", type=int, default=1)
        parser.add_argument("--template", help="template slug (default: the first enabled template)")
        parser.add_argument("--warm-min", type=int, help="the pool's minimum (default: the template's)")
        parser.add_argument("--warm-max", type=int, help="the pool's maximum (default: the template's)")
        parser.add_argument("--lead-time", type=float, help="seconds a claimed container takes to be replaced "
                            "(default: the runtime's cold start p95 + the refill nudge)")
        parser.add_argument("--window", type=float, help="seconds of recent opens the target reads (default 300)")
        parser.add_argument("--idle-timeout", type=int, metavar="MINUTES",
                            help="the template's idle timeout instead of its own (the plan's still applies if shorter)")
        parser.add_argument("--storage-gib", type=float, default=None,
                            help="stored GiB per user for the storage cost (default 0.05)")
        parser.add_argument("--runtime", default=DEFAULT_PROFILE, help="runtime profile: code-server or tiny")
        parser.add_argument("--refresh-from", action="append", default=[], metavar="FILE",
                            help="bench/claim.py or bench/cold_phases.py JSON output replacing the measured "
                                 "distributions (repeatable)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")
        parser.add_argument("--plot", metavar="FILE", help="write an SVG of demand, pool size and waits over a day")

    def handle(self, *args, **options):
        users, days = options["users"], options["days"]
        if users < 1:
            raise CommandError(f"--users must be at least 1, not {users}")
        if not 1 <= days <= 366:
            raise CommandError(f"--days must be between 1 and 366, not {days}")
        plans = {plan.slug: plan for plan in Plan.objects.all()}
        try:
            mix = plan_mix_parse(options["plan_mix"], plans=plans)
        except ValueError as exc:
            raise CommandError(f"--plan-mix: {exc}") from None
        template = self._template(options["template"])
        bounds = self._bounds(template, options["warm_min"], options["warm_max"])
        if options["idle_timeout"] is not None:
            if options["idle_timeout"] < 1:
                raise CommandError(f"--idle-timeout must be at least 1 minute, not {options['idle_timeout']}")
            template = copy.copy(template)  # the run's alone: nothing is saved
            template.idle_timeout_minutes = options["idle_timeout"]
        for name in ("lead_time", "window", "storage_gib"):
            if options[name] is not None and options[name] < 0:
                raise CommandError(f"--{name.replace('_', '-')} must not be negative, not {options[name]}")
        if options["window"] is not None and options["window"] == 0:
            raise CommandError("--window must be above 0")
        try:
            runtime = runtime_load(options["runtime"], refresh_from=options["refresh_from"])
        except RuntimeDataError as exc:
            raise CommandError(str(exc)) from None
        extra = {} if options["storage_gib"] is None else {"storage_gib_per_user": options["storage_gib"]}
        run = simulation_run(users=users, days=days, plan_mix=mix, seed=options["seed"], template=template,
                             bounds=bounds, lead_time_s=options["lead_time"], window_s=options["window"],
                             runtime=runtime, plans=plans, **extra)
        if options["plot"]:
            try:
                Path(options["plot"]).write_text(plot_svg(run.result))
            except OSError as exc:
                raise CommandError(f"--plot: cannot write {options['plot']}: {exc}") from None
        if options["json"]:
            self.stdout.write(json.dumps(run.figures))
            return
        inputs = run.inputs
        self.stdout.write(table(run.figures, title=(
            f"template {template.slug}: bounds {inputs.bounds.minimum}–{inputs.bounds.maximum}, lead time "
            f"{inputs.lead_time_s:.2f} s, window {inputs.window_s:.0f} s, pool tick {inputs.pool_tick_s:.0f} s; "
            f"runtime {', '.join(runtime.sources)}")))

    def _template(self, slug):
        templates = WorkspaceTemplate.objects.filter(enabled=True).order_by("pk")
        if slug:
            template = WorkspaceTemplate.objects.filter(slug=slug).first()
            if template is None:
                raise CommandError(f"--template: no template '{slug}' (templates: "
                                   f"{', '.join(templates.values_list('slug', flat=True)) or 'none'})")
            return template
        return templates.first() or WorkspaceTemplate(slug="default")

    def _bounds(self, template, warm_min, warm_max):
        current = template_bounds(template)
        minimum = current.minimum if warm_min is None else warm_min
        maximum = current.maximum if warm_max is None else warm_max
        if minimum < 0 or maximum < 0:
            raise CommandError(f"--warm-min and --warm-max must not be negative (got {minimum} and {maximum})")
        if minimum > maximum:
            raise CommandError(f"--warm-min ({minimum}) is above --warm-max ({maximum})")
        return Bounds(minimum=minimum, maximum=maximum)
