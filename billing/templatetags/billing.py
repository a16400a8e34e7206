"""Template tags of billing: money in integer minor units as text."""
from django import template

from billing.invoices import money as money_text

register = template.Library()


@register.simple_tag
def money(cents, currency):
    return money_text(cents, currency)
