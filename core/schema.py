"""The API's OpenAPI side: schema names and operation ids from the view classes, and one URL served by one view
class per operation (`route_by_method`), which the schema sees as separate operations."""
import re

from django.http import JsonResponse
from drf_spectacular import openapi
from rest_framework.views import APIView


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


def expand_method_routes(endpoints):
    """drf-spectacular preprocessing hook: give each method of a `route_by_method` URL its own view."""
    return [
        (path, regex, method, getattr(callback, "operation_handlers", {}).get(method, callback))
        for path, regex, method, callback in endpoints
    ]
