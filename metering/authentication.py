"""Service-token authentication (`Authorization: Bearer hsv_…`) for the platform's other services."""
from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.permissions import BasePermission

from metering.models import ServiceToken
from metering.tokens import SERVICE_TOKEN_PREFIX, service_token_authenticate


class ServiceTokenAuthentication(BaseAuthentication):
    """Authenticates `hsv_` tokens only; any other bearer token is left to the next authentication class."""

    keyword = b"bearer"

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if len(parts) != 2 or parts[0].lower() != self.keyword:
            return None
        plaintext = parts[1].decode(errors="replace")
        if not plaintext.startswith(SERVICE_TOKEN_PREFIX):
            return None
        token = service_token_authenticate(plaintext)
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked service token.")
        return None, token

    def authenticate_header(self, request):
        return 'Bearer realm="api"'


class IsServiceToken(BasePermission):
    message = (
        "This endpoint takes a service token (Authorization: Bearer hsv_…), not a tenant member's personal token. "
        "Staff create service tokens in admin or with `manage.py create_service_token`."
    )

    def has_permission(self, request, view):
        return isinstance(request.auth, ServiceToken)
