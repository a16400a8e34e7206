"""The portal's usage page: this billing month per meter, as server-rendered SVG charts (no JavaScript)."""
from django.shortcuts import render
from django.utils import timezone

from metering import selectors
from tenants.portal import dashboard_card, tenant_view

CHART_WIDTH, CHART_HEIGHT, PAD = 620, 160, 28


def _chart(days, *, unit, allowance=None):
    """Bar geometry for one meter over the month's days, plus a dashed line at the daily allowance if any."""
    top = max([quantity for _, quantity in days] + [allowance or 0])
    peak = top or 1  # an empty month still draws its axis
    slot = (CHART_WIDTH - PAD) / max(len(days), 1)
    usable = CHART_HEIGHT - PAD
    bars = []
    for index, (day, quantity) in enumerate(days):
        height = usable * quantity / peak
        bars.append({"x": round(PAD + index * slot + 1, 1), "y": round(usable - height + 4, 1),
                     "width": round(max(slot - 2, 1), 1), "height": round(height, 1),
                     "label": f"{day:%b %d}: {selectors._format(quantity, unit)}",
                     "day": day.day, "show_day": index % 5 == 0})
    line = round(usable - usable * allowance / peak + 4, 1) if allowance else None
    return {"bars": bars, "allowance_y": line, "width": CHART_WIDTH, "height": CHART_HEIGHT, "pad": PAD,
            "top_label": selectors._format(top, unit) if top else "nothing used yet", "axis_y": usable + 4}


@tenant_view
def usage(request, membership):
    tenant = membership.tenant
    now = timezone.now()
    current = selectors.usage_current(tenant=tenant, now=now)
    series = selectors.usage_series(tenant=tenant, now=now)
    meters = []
    for slug, item in series.items():
        meter = item["meter"]
        figure = current["meters"].get(slug, {})
        daily = selectors.included(tenant.plan, slug, "day")
        today = current["day"]["meters"].get(slug)
        meters.append({
            "slug": slug, "name": meter.name, "unit": meter.unit,
            "used": selectors._format(figure.get("used", 0), meter.unit),
            "included": selectors._format(figure["included"], meter.unit) if figure.get("included") else None,
            "remaining": selectors._format(figure["remaining"], meter.unit) if figure.get("included") else None,
            "gauge": meter.aggregation == "max",
            "today": selectors._format(today["used"], meter.unit) if today else None,
            "today_included": selectors._format(daily, meter.unit) if daily else None,
            "chart": _chart(item["days"], unit=meter.unit, allowance=daily),
        })
    return render(request, "metering/usage.html", {
        "usage": current, "meters": meters,
        "current_tenant": tenant,
    })


@dashboard_card("usage")
def usage_card(request, membership):
    """The dashboard's usage card: each allowance of the plan with what is used of it."""
    return {f"{item['name']} ({'today' if item['period'] == 'day' else 'this month'})":
            f"{item['ratio']:.0%} used" for item in selectors.usage_limits(tenant=membership.tenant)}
