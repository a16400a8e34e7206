"""API authentication by personal token; kept apart from the views so DRF's settings can import it early."""
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header

from tenants import policy
from tenants.exceptions import Forbidden
from tenants.tokens import api_token_authenticate


class ApiTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer hth_…` — a personal token that acts for one member of one tenant."""

    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != self.keyword:
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send the token as 'Authorization: Bearer <token>'.")
        token = api_token_authenticate(parts[1].decode(errors="replace"))
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked API token.")
        try:
            policy.api_token_sso_check(token)
        except Forbidden as exc:
            raise exceptions.AuthenticationFailed(exc.message, code=exc.code) from None
        return token.membership.user, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class ApiTokenScheme(OpenApiAuthenticationExtension):
    """Declares the Bearer scheme in the OpenAPI schema."""

    target_class = ApiTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "hth_…",
            "description": "A personal API token: it acts for one member of one tenant.",
        }
