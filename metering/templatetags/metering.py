"""`{% load metering %}{% usage_banner tenant %}`: the usage warning any portal page can include."""
from django import template

from metering import selectors

register = template.Library()


@register.inclusion_tag("metering/_banner.html")
def usage_banner(tenant):
    return {"banner": selectors.usage_banner(tenant)}
