"""A deployment check of the gateway's domain (`manage.py check --deploy`).

Workspaces run code their users write, on `<host_key>.<GATEWAY_HOST>`. A page there can set cookies for any parent
domain it shares with the portal (`Domain=example.com` reaches `portal.example.com`), so the two must not share a
registrable domain. The registrable domain is taken as the last two labels: right for `example.com`, too strict
for `example.co.uk` (a warning, not an error, for such a suffix).
"""
from urllib.parse import urlsplit

from django.conf import settings
from django.core import checks


def _site(host):
    labels = host.lower().rstrip(".").split(".")
    return ".".join(labels[-2:])


@checks.register(checks.Tags.security, deploy=True)
def gateway_domain_check(app_configs=None, **kwargs):
    portal = urlsplit(settings.HEARTH_BASE_URL).hostname or ""
    gateway = settings.GATEWAY_HOST
    if portal and gateway and _site(portal) == _site(gateway):
        return [checks.Warning(
            f"Workspaces ({gateway}) and the portal ({portal}) share the domain {_site(portal)}: code in a workspace "
            "can set cookies the portal receives.",
            hint="Serve workspaces from a registrable domain of their own (GATEWAY_HOST=workspaces-example.net "
                 "for a portal at hearth.example.com); see docs/GATEWAY.md.",
            id="hearth.W001",
        )]
    return []
