"""Addresses on the gateway: where a workspace answers and the URL that opens it."""
from urllib.parse import quote

from django.conf import settings

from workspaces.gateway.config import OPEN_PATH


def workspace_origin(*, host_key: str) -> str:
    """The workspace's stable origin: <host_key>.<GATEWAY_HOST>[:port], the same for all its sessions."""
    port = settings.HEARTH_GATEWAY_PORT
    default = {"http": 80, "https": 443}.get(settings.GATEWAY_SCHEME)
    netloc = f"{host_key}.{settings.GATEWAY_HOST}" + ("" if port == default else f":{port}")
    return f"{settings.GATEWAY_SCHEME}://{netloc}"


def workspace_url(*, host_key: str, token: str) -> str:
    """The opening URL: the gateway turns the token into a host-only cookie and redirects to the clean URL."""
    return f"{workspace_origin(host_key=host_key)}{OPEN_PATH}?token={quote(token, safe='')}"
