"""A run's figures (container-hours against one container per user, waits, cold-start rate, cost per user-month at
the cost model's unit prices), its table and its plot (SVG, written by hand) of demand, pool size and waits over a
day."""
import math
from decimal import Decimal
from html import escape

from billing.costs import Usage, plan_memory_gib, plan_vcpus, usage_cost
from workspaces.models import WorkspaceTemplate

DAY = 86400.0
DAYS_PER_MONTH = 365.25 / 12
# The cost model's warm-pool line (CostRates.warm_pool_month) is what the default pool costs a month: the default
# warm target's containers (2: "two cost about 20-40 a month"). A simulated warm container-second is priced at that
# line's share, so a pool that follows demand costs what it holds.
REFERENCE_WARM = WorkspaceTemplate._meta.get_field("warm_min").default

JSON_KEYS = ("users", "days", "container_hours", "naive_container_hours", "wait_p50_s", "wait_p99_s",
             "cold_start_rate", "peak_containers", "cost_per_user_month_usd")


def pct(values, p):
    """The p-th percentile by linear interpolation (None if empty), as bench/stats.py."""
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def cost_breakdown(result, *, rates, storage_gib_per_user):
    """What the simulated period costs (Decimal, the rates' currency), by line."""
    seconds_per_month = Decimal(DAYS_PER_MONTH * DAY)
    months = Decimal(result.days) / Decimal(DAYS_PER_MONTH)
    default_vcpus = Usage(vcpus=rates.default_vcpus, memory_gib=Decimal(rates.default_memory_mb) / 1024)
    sessions = sum((usage_cost(Usage(workspace_seconds=int(seconds), vcpus=plan_vcpus(result.plans[slug], rates),
                                     memory_gib=plan_memory_gib(result.plans[slug], rates)), rates=rates).total
                    for slug, seconds in result.claimed_s_by_plan.items()), Decimal(0))
    starting = usage_cost(Usage(workspace_seconds=int(result.cold_starting_s), vcpus=default_vcpus.vcpus,
                                memory_gib=default_vcpus.memory_gib), rates=rates).total
    warm = Decimal(result.warm_s) * rates.warm_pool_month / (REFERENCE_WARM * seconds_per_month)
    storage = usage_cost(Usage(storage_gb_months=Decimal(str(storage_gib_per_user)) * result.users * months),
                         rates=rates).total
    fixed = (rates.file_storage_month + rates.database_month) * months
    return {"sessions": sessions + starting, "warm_pool": warm, "storage": storage, "fixed": fixed}


def summarize(result, *, rates, storage_gib_per_user, wall_s=None):
    """The run's figures: the issue's keys first, then extras."""
    waits = [w for _, w, _ in result.waits]
    opens = len(result.waits)
    claimed_s = sum(result.claimed_s_by_plan.values())
    container_s = claimed_s + result.warm_s + result.cold_starting_s
    naive = result.users * result.days * 24
    costs = cost_breakdown(result, rates=rates, storage_gib_per_user=storage_gib_per_user)
    months = Decimal(result.days) / Decimal(DAYS_PER_MONTH)
    per_user_month = sum(costs.values(), Decimal(0)) / result.users / months if result.users and result.days else 0
    figures = {
        "users": result.users,
        "days": result.days,
        "container_hours": round(container_s / 3600, 1),
        "naive_container_hours": naive,
        "wait_p50_s": _round(pct(waits, 50)),
        "wait_p99_s": _round(pct(waits, 99)),
        "cold_start_rate": round(sum(1 for *_, cold in result.waits if cold) / opens, 4) if opens else None,
        "peak_containers": result.peak_containers,
        "cost_per_user_month_usd": round(float(per_user_month), 4),
        # extras
        "reduction_x": round(naive / (container_s / 3600), 1) if container_s else None,
        "wait_p95_s": _round(pct(waits, 95)),
        "wait_max_s": _round(max(waits) if waits else None),
        "opens": opens,
        "resumes": result.resumes,
        "refused": dict(sorted(result.refused.items())),
        "ended": dict(sorted(result.ended.items())),
        "peak_working": result.peak_working,
        "session_container_hours": round(claimed_s / 3600, 1),
        "warm_container_hours": round(result.warm_s / 3600, 1),
        "idle_tail_container_hours": round(result.idle_tail_s / 3600, 1),
        "metered_hours": round(sum(result.metered_s_by_plan.values()) / 3600, 1),
        "cost_usd": {line: round(float(value), 2) for line, value in costs.items()},
        "cost_per_user_month_by_line_usd": {line: round(float(value / result.users / months), 4)
                                            for line, value in costs.items()} if result.users else {},
    }
    if wall_s is not None:
        figures["wall_s"] = round(wall_s, 2)
    return figures


def _round(value, digits=4):
    return None if value is None else round(value, digits)


def table(figures, *, title=""):
    """The figures as lines of text, with the issue's targets where it sets one."""
    rows = [
        ("users / days", f"{figures['users']} / {figures['days']}", ""),
        ("container-hours", f"{figures['container_hours']} (sessions {figures['session_container_hours']}, of which "
                            f"idle before reclaim {figures['idle_tail_container_hours']}; warm "
                            f"{figures['warm_container_hours']})", ""),
        ("one per signed-in user", f"{figures['naive_container_hours']} ({figures['reduction_x']}× more)", "≥ 20×"),
        ("open wait p50 / p95 / p99", " / ".join(f"{figures[k] * 1000:.1f} ms" if figures[k] is not None else "–"
                                                 for k in ("wait_p50_s", "wait_p95_s", "wait_p99_s")), "p99 < 1 s"),
        ("longest wait", f"{figures['wait_max_s']} s" if figures["wait_max_s"] is not None else "–", ""),
        ("opens (cold-start rate)", f"{figures['opens']} ({figures['cold_start_rate']})", ""),
        ("refused opens", ", ".join(f"{k} {v}" for k, v in figures["refused"].items()) or "none", ""),
        ("sessions ended", ", ".join(f"{k} {v}" for k, v in figures["ended"].items()) or "none", ""),
        ("peak containers / working", f"{figures['peak_containers']} / {figures['peak_working']}", ""),
        ("cost per user-month", f"${figures['cost_per_user_month_usd']:.4f} (" + ", ".join(
            f"{k} {v:.4f}" for k, v in figures["cost_per_user_month_by_line_usd"].items()) + ")", "≤ $0.10"),
    ]
    if "wall_s" in figures:
        rows.append(("wall time", f"{figures['wall_s']} s", "≤ 60 s"))
    width = max(len(r[0]) for r in rows)
    lines = [title] if title else []
    lines += [f"{name:<{width}}  {value}" + (f"   [target {target}]" if target else "") for name, value, target in rows]
    return "\n".join(lines)


def busiest_day(result):
    """The day with the most opens (the plot's day)."""
    counts = {}
    for at, _, _ in result.waits:
        counts[int(at // DAY)] = counts.get(int(at // DAY), 0) + 1
    return max(counts, key=lambda d: (counts[d], -d)) if counts else 0


def plot_svg(result, *, day=None):
    """An SVG of one day (the busiest by default): live sessions (demand), the pool (warm and starting) and its
    target per pool tick on the left axis, each open's wait as a dot on the right axis."""
    day = busiest_day(result) if day is None else day
    start, end = day * DAY, (day + 1) * DAY
    series = [row for row in result.series if start <= row[0] < end]
    waits = [(at, w, cold) for at, w, cold in result.waits if start <= at < end]
    width, height, left, right, top, bottom = 900, 360, 50, 60, 30, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    y_max = 4 * math.ceil(max([1] + [max(r[1], r[3], r[4]) for r in series]) / 4)  # whole ticks
    w_max = max([1.0] + [w for _, w, _ in waits])

    def x(t):
        return left + (t - start) / DAY * plot_w

    def y(v):
        return top + plot_h - v / y_max * plot_h

    def yw(v):
        return top + plot_h - v / w_max * plot_h

    def line(index, colour, dash=""):
        steps = []  # a step line: a point only where the value changes
        for i, row in enumerate(series):
            if i == 0 or row[index] != series[i - 1][index]:
                if i:
                    steps.append((row[0], series[i - 1][index]))
                steps.append((row[0], row[index]))
        if series:
            steps.append((series[-1][0], series[-1][index]))
        points = " ".join(f"{x(t):.1f},{y(v):.1f}" for t, v in steps)
        return (f'<polyline fill="none" stroke="{colour}" stroke-width="1.5"{dash} points="{points}"/>'
                if points else "")

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<text x="{left}" y="18" font-size="13">Day {day + 1} ({"weekend" if day % 7 >= 5 else "weekday"}): '
             f'demand, pool and waits — {escape(str(result.users))} users</text>',
             f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="black"/>',
             f'<line x1="{left + plot_w}" y1="{top}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="black"/>']
    for hour in range(0, 25, 3):
        parts.append(f'<text x="{x(start + hour * 3600):.1f}" y="{top + plot_h + 15}" text-anchor="middle">'
                     f'{hour:02d}:00</text>')
    for i in range(5):
        v = y_max * i / 4
        parts.append(f'<text x="{left - 5}" y="{y(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>')
        parts.append(f'<text x="{left + plot_w + 5}" y="{yw(w_max * i / 4) + 4:.1f}">{w_max * i / 4:.2f} s</text>')
    parts += [line(1, "#1f77b4"), line(3, "#2ca02c"), line(4, "#2ca02c", ' stroke-dasharray="4 3"')]
    for at, wait, cold in waits:
        colour = "#d62728" if cold else "#ff7f0e"
        parts.append(f'<circle cx="{x(at):.1f}" cy="{yw(wait):.1f}" r="2.5" fill="{colour}"/>')
    legend = [("#1f77b4", "live sessions (demand)"), ("#2ca02c", "pool: warm + starting (dashed: target)"),
              ("#ff7f0e", "open wait, warm (right axis)"), ("#d62728", "open wait, cold start")]
    for i, (colour, label) in enumerate(legend):
        parts.append(f'<rect x="{left + 10 + i * 210}" y="{height - 14}" width="10" height="10" fill="{colour}"/>'
                     f'<text x="{left + 24 + i * 210}" y="{height - 5}">{escape(label)}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
