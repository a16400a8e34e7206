"""The one place the API resolves the tenant from the credentials and scopes every queryset (STYLE habit 4).

Subclasses of TenantScopedView get `self.tenant` and `self.membership` from the token and implement
`scoped_queryset()`; overriding `get_queryset` is refused at class creation, so no view can forget the
tenant filter. The escape hatch is named `dangerously_get_queryset` and must be justified where used.
"""
import base64
import json
import re

from django.core.exceptions import FieldDoesNotExist
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db.models import Q
from django.http import Http404, JsonResponse
from drf_spectacular import openapi
from drf_spectacular.utils import OpenApiParameter
from rest_framework import exceptions, serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView
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
    write_denied_message = IsTenantManager.message

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
            self.permission_denied(request, message=self.write_denied_message)

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


class StrictInputSerializer(serializers.Serializer):
    """An input serializer that rejects fields it does not know instead of silently dropping them.

    `refused_fields` maps a field name to the message that says why (and where to change it instead).
    """

    refused_fields = {}

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            unknown = [key for key in data.keys() if key not in self.fields]
            if unknown:
                raise exceptions.ValidationError({
                    key: [self.refused_fields.get(key, f"'{key}' is not a field of this request; "
                                                       f"accepted: {', '.join(self.fields) or 'none'}.")]
                    for key in unknown
                })
        return super().to_internal_value(data)


class AutoSchema(openapi.AutoSchema):
    """Names nested serializers after their view (`MemberInviteApi.InputSerializer` → `MemberInviteInput`),
    so every app can use the `InputSerializer`/`OutputSerializer` convention without name clashes."""

    def get_serializer_name(self, serializer, direction):
        qualname = type(serializer).__qualname__
        if "." in qualname:
            outer, inner = qualname.rsplit(".", 1)
            return outer.split(".")[-1].removesuffix("Api") + inner.removesuffix("Serializer")
        return super().get_serializer_name(serializer, direction)

    def get_operation_id(self):
        # `MemberInviteApi` → `member_invite`: stable ids that say what the operation does.
        name = type(self.view).__name__
        if name.endswith("Api"):
            return re.sub(r"(?<!^)(?=[A-Z])", "_", name.removesuffix("Api")).lower()
        return super().get_operation_id()

    def get_summary(self):
        name = type(self.view).__name__
        if name.endswith("Api"):
            words = re.sub(r"(?<!^)(?=[A-Z])", " ", name.removesuffix("Api")).lower()
            return super().get_summary() or words.capitalize()
        return super().get_summary()


def route_by_method(**views):
    """One URL, one view class per operation: `route_by_method(get=TenantGetApi, patch=TenantUpdateApi)`.

    The OpenAPI schema sees each operation's own view through `expand_method_routes`.
    """
    handlers = {method.upper(): view.as_view() for method, view in views.items()}

    def dispatch(request, *args, **kwargs):
        handler = handlers.get(request.method)
        if handler is None and request.method in ("HEAD", "OPTIONS"):
            handler = handlers.get("GET") or next(iter(handlers.values()))
        if handler is None:
            response = JsonResponse(
                {"code": "method_not_allowed", "detail": f"Method \"{request.method}\" not allowed."}, status=405
            )
            response["Allow"] = allow
            return response
        response = handler(request, *args, **kwargs)
        if response.has_header("Allow"):  # each view knows only its own method
            response["Allow"] = allow
        return response

    allow = ", ".join([*handlers, "HEAD", "OPTIONS"] if "GET" in handlers else [*handlers, "OPTIONS"])
    dispatch.csrf_exempt = True  # token-authenticated, like every DRF view
    dispatch.operation_handlers = handlers
    # What the schema generator's endpoint enumerator inspects to list the allowed methods.
    dispatch.cls = type("MethodRoute", (APIView,), {method.lower(): None for method in handlers})
    dispatch.initkwargs = {}
    return dispatch


def endpoint_not_found(request, *args, **kwargs):
    """Unknown URLs under /api/ answer JSON like every other API error, not the HTML 404 page."""
    return JsonResponse({"code": "not_found", "detail": f"No API endpoint at {request.path}."}, status=404)


def expand_method_routes(endpoints):
    """drf-spectacular preprocessing hook: give each method of a `route_by_method` URL its own view."""
    return [
        (path, regex, method, getattr(callback, "operation_handlers", {}).get(method, callback))
        for path, regex, method, callback in endpoints
    ]


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


PAGE_SIZE_DEFAULT = 100
PAGE_SIZE_MAX = 500
PAGE_PARAMETERS = [
    OpenApiParameter("limit", int, description=f"Items per page, 1–{PAGE_SIZE_MAX} (default "
                                                f"{PAGE_SIZE_DEFAULT})."),
    OpenApiParameter("after", str, description="The opaque cursor from the previous page's `Link: <…>; "
                                                "rel=\"next\"` header."),
]


def paged_response(request, queryset, serializer_class, *, order=("-pk",)):
    """A list answer, one page at a time: the body stays a JSON list; the next page is in a `Link` header.

    Keyset pagination on `order`, whose last field must be unique (the primary key): a page never repeats or
    skips an item when rows are added meanwhile, and page 1,000 costs what page 1 does. The cursor is the last
    item's values of `order`, opaque to clients.
    """
    limit = _query_int(request, "limit", default=PAGE_SIZE_DEFAULT, low=1, high=PAGE_SIZE_MAX)
    rows = queryset.order_by(*order)
    after = request.query_params.get("after")
    if after:
        rows = rows.filter(_after(order, _cursor_decode(after, queryset.model, order)))
    rows = list(rows[: limit + 1])
    response = Response(serializer_class(rows[:limit], many=True).data)
    if len(rows) > limit:
        query = request.query_params.copy()
        query["after"] = _cursor_encode(rows[limit - 1], order)
        query["limit"] = str(limit)
        response["Link"] = f'<{request.build_absolute_uri(request.path)}?{query.urlencode()}>; rel="next"'
    return response


def _after(order, values):
    """Rows after `values` in `order`: (a < x) or (a = x and b < y) …, with > for ascending fields."""
    condition, equal = Q(pk__in=[]), Q()
    for field, value in zip(order, values, strict=True):
        name = field.lstrip("-")
        condition |= equal & Q(**{f"{name}__{'lt' if field.startswith('-') else 'gt'}": value})
        equal &= Q(**{name: value})
    return condition


def _cursor_encode(row, order):
    values = [getattr(row, field.lstrip("-")) for field in order]
    raw = json.dumps([value.isoformat() if hasattr(value, "isoformat") else str(value) for value in values])
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _cursor_decode(cursor, model, order):
    try:
        raw = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if not isinstance(raw, list) or len(raw) != len(order):
            raise ValueError(cursor)
        fields = [model._meta.pk if f.lstrip("-") == "pk" else model._meta.get_field(f.lstrip("-")) for f in order]
        return [field.to_python(value) for field, value in zip(fields, raw, strict=True)]
    except (ValueError, TypeError, DjangoValidationError, FieldDoesNotExist):
        raise exceptions.ValidationError({"after": ["Not a cursor of this list: pass the `after` of a `Link` "
                                                    "header unchanged."]}) from None


def _query_int(request, name, *, default, low, high):
    raw = request.query_params.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise exceptions.ValidationError({name: [f"Must be a whole number from {low} to {high}."]})
    return value
