"""Every API error is JSON: the DRF exception handler (settings: EXCEPTION_HANDLER) and the 404 for unknown /api/."""
import logging

from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from tenants.exceptions import ServiceError

logger = logging.getLogger(__name__)
# A client retries after this many seconds when the database did not answer (PostgreSQL restarting, a cut connection).
DATABASE_RETRY_AFTER = 1


@csrf_exempt  # it changes nothing; a CSRF check would answer an unknown path's POST with the HTML 403 page
def endpoint_not_found(request, *args, **kwargs):
    """Unknown URLs under /api/ answer JSON like every other API error, whatever the method, not an HTML page."""
    return JsonResponse({"code": "not_found", "detail": f"No API endpoint at {request.path}."}, status=404)


def exception_handler(exc, context):
    """Every API error is JSON: {"code", "detail"} (+ "field") with a 4xx status, or a 503 (+ Retry-After) for what
    only time fixes."""
    if isinstance(exc, ServiceError):
        body = {"code": exc.code, "detail": exc.message, **exc.extra}
        if exc.field:
            body["field"] = exc.field
        response = Response(body, status=exc.status_code)
        if exc.retry_after is not None:
            response["Retry-After"] = str(int(exc.retry_after))
        return response
    if isinstance(exc, (OperationalError, InterfaceError)):
        # The database went away under the request (seen in the chaos suite while PostgreSQL restarts): the request
        # did nothing, so say so in the API's shape, not Django's HTML 500 page. Django closes the broken connection
        # at the request's end (errors_occurred), and the next request connects again.
        logger.warning("database unavailable during %s", context.get("request") and context["request"].path,
                       exc_info=exc)
        return Response({"code": "database_unavailable", "detail": "The database did not answer; try again shortly."},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": str(DATABASE_RETRY_AFTER)})
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
