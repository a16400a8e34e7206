"""The one place the API resolves the tenant from the credentials and scopes every queryset (STYLE habit 4).

Subclasses of TenantScopedView get `self.tenant` and `self.membership` from the token and implement
`scoped_queryset()`; overriding `get_queryset` is refused at class creation, so no view can forget the
tenant filter. The escape hatch is named `dangerously_get_queryset` and must be justified where used.
"""
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tenants.exceptions import ServiceError
from tenants.models import Role, Tenant


class IsTenantMember(BasePermission):
    """The credentials carry a membership, and the tenant is not offboarded."""

    message = "This endpoint needs a tenant member's API token."

    def has_permission(self, request, view):
        membership = getattr(request.auth, "membership", None)
        return membership is not None and membership.tenant.status != Tenant.Status.OFFBOARDED


class IsTenantManager(BasePermission):
    message = "Only the tenant's owners and admins can do this."

    def has_permission(self, request, view):
        return request.auth.membership.role in (Role.OWNER, Role.ADMIN)


class TenantScopedView(GenericAPIView):
    permission_classes = [IsAuthenticated, IsTenantMember]
    # Roles allowed to write (POST/PATCH/PUT/DELETE); None: every member.
    write_roles = (Role.OWNER, Role.ADMIN)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides get_queryset; implement scoped_queryset() instead "
                "(or dangerously_get_queryset with a comment saying why)"
            )

    @property
    def membership(self):
        return self.request.auth.membership

    @property
    def tenant(self):
        return self.request.auth.membership.tenant

    def check_permissions(self, request):
        super().check_permissions(request)
        if (
            request.method not in ("GET", "HEAD", "OPTIONS")
            and self.write_roles is not None
            and self.membership.role not in self.write_roles
        ):
            self.permission_denied(request, message=IsTenantManager.message)

    def scoped_queryset(self):
        raise NotImplementedError

    def dangerously_get_queryset(self):
        raise NotImplementedError

    def get_queryset(self):
        try:
            return self.dangerously_get_queryset()
        except NotImplementedError:
            pass
        return self.scoped_queryset()


def exception_handler(exc, context):
    """Every API error is JSON: {"code", "detail"} (+ "field") with a 4xx status."""
    if isinstance(exc, ServiceError):
        body = {"code": exc.code, "detail": exc.message, **exc.extra}
        if exc.field:
            body["field"] = exc.field
        return Response(body, status=exc.status_code)
    if isinstance(exc, Http404):
        exc = exceptions.NotFound("Not found.")
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        response.data = {"code": "invalid", "detail": _flatten(exc.detail), "errors": exc.detail}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {"code": codes if isinstance(codes, str) else "error", "detail": str(exc.detail)}
    if response.status_code == status.HTTP_401_UNAUTHORIZED and "WWW-Authenticate" not in response:
        response["WWW-Authenticate"] = 'Bearer realm="api"'
    return response


def _flatten(detail):
    if isinstance(detail, dict):
        return "; ".join(f"{k}: {_flatten(v)}" if k != "non_field_errors" else _flatten(v) for k, v in detail.items())
    if isinstance(detail, list):
        return " ".join(_flatten(d) for d in detail)
    return str(detail)
