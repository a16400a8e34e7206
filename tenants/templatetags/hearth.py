"""Template filters of the portal: prices, allowances and the current page in the navigation."""
from django import template
from django.utils.safestring import mark_safe

register = template.Library()

CURRENCY_SIGNS = {"usd": "$", "eur": "€", "gbp": "£"}


@register.filter
def money(cents, currency="usd"):
    """500 → "$5", 2550 → "$25.50"; None (custom pricing) → "Custom"."""
    if cents is None:
        return "Custom"
    sign = CURRENCY_SIGNS.get((currency or "").lower())
    amount = f"{cents / 100:,.2f}".removesuffix(".00")
    return f"{sign}{amount}" if sign else f"{amount} {(currency or '').upper()}"


@register.filter
def storage(mb):
    if mb is None:
        return "Unlimited"
    return f"{mb // 1024:,} GB" if mb >= 1024 and mb % 1024 == 0 else f"{mb:,} MB"


@register.filter
def allowance(value, unit=""):
    """None means unlimited in every Plan allowance."""
    if value is None:
        return "Unlimited"
    return f"{value:,} {unit}".strip()


@register.filter
def plan_time(plan):
    """The IDE time a plan includes, in the unit the plan counts it in."""
    if plan.daily_minutes is not None:
        return f"{plan.daily_minutes:,} minutes a day"
    if plan.monthly_hours is not None:
        return f"{plan.monthly_hours:,} hours a month"
    return "Unlimited"


@register.simple_tag(takes_context=True)
def current(context, *url_names):
    """aria-current="page" when the page is one of `url_names` (e.g. "portal:members")."""
    match = getattr(context.get("request"), "resolver_match", None)
    name = f"{match.namespace}:{match.url_name}" if match and match.namespace else getattr(match, "url_name", None)
    return mark_safe('aria-current="page"') if name in url_names else ""
