"""The portal's check that a browser session acts only in tenants its user still belongs to."""
from tenants.portal import portal_session_check


class PortalSessionMiddleware:
    """After authentication, on every browser request (not the token-only API or SCIM, which have no session):
    tenants.portal.portal_session_check."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if hasattr(request, "user") and hasattr(request, "session"):
            portal_session_check(request)
        return self.get_response(request)
