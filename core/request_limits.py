"""The size limit of every request body: one number (Django's DATA_UPLOAD_MAX_MEMORY_SIZE) for every endpoint,
answered 413 before a view or parser reads anything, in the API's JSON error shape under /api/."""
from django.conf import settings
from django.http import HttpResponse, JsonResponse
from rest_framework import exceptions, status

API_PREFIX = "/api/"


class RequestTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "request_too_large"


def body_limit():
    """The largest body accepted, in bytes; None: no limit (Django's own meaning of the setting)."""
    return settings.DATA_UPLOAD_MAX_MEMORY_SIZE


def too_large_message(limit):
    return f"The request body is larger than {limit} bytes."


def read_limited(stream):
    """The whole body of `stream`, refused with RequestTooLarge past the limit (for parsers reading it raw: a body
    sent without Content-Length passes the middleware's check, so the reader counts too)."""
    limit = body_limit()
    if stream is None:
        return b""
    if limit is None:
        return stream.read()
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise RequestTooLarge(too_large_message(limit))
    return data


class BodySizeLimitMiddleware:
    """Refuses a request whose declared body is past the limit, whatever the endpoint and the way it reads bodies
    (Django applies the setting only to request.body and forms; DRF's parsers and raw readers bypass it)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        limit = body_limit()
        if limit is not None:
            try:
                length = int(request.META.get("CONTENT_LENGTH") or 0)
            except ValueError:
                length = 0
            if length > limit:
                return self._refuse(request, limit)
        return self.get_response(request)

    @staticmethod
    def _refuse(request, limit):
        if request.path_info.startswith(API_PREFIX):
            return JsonResponse({"code": "request_too_large", "detail": too_large_message(limit)}, status=413)
        return HttpResponse(too_large_message(limit), status=413, content_type="text/plain; charset=utf-8")
