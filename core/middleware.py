"""The browser's middleware, skipped on the token-only API (/api/v1/) and SCIM (/scim/): session, CSRF, login
and messages; and the request's context (core.context) with its log line.

An API request carries a bearer token and no cookie that Hearth reads, so loading a session, checking a CSRF
cookie or preparing message storage is work for nothing on every call. Everywhere else (portal, admin, accounts,
the API's schema and docs pages) these are Django's own classes, unchanged; the admin's system checks accept them
as subclasses.
"""
import logging
import time

from django.conf import settings
from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as _SessionMiddleware
from django.middleware.csrf import CsrfViewMiddleware as _CsrfViewMiddleware

from core.context import context_clear

# The REST API and SCIM (an identity provider's directory): bearer tokens only.
TOKEN_ONLY_PREFIXES = ("/api/v1/", "/scim/")
request_log = logging.getLogger("hearth.request")


class RequestContextMiddleware:
    """A request starts with an empty context (a worker thread's previous request named another tenant), which the
    API's TenantScopedView and the portal then fill; and ends with one log line carrying it (LOG_REQUESTS)."""

    def __init__(self, get_response):
        self.get_response = get_response
        self.log_requests = settings.LOG_REQUESTS

    def __call__(self, request):
        context_clear()
        try:
            if not self.log_requests:
                return self.get_response(request)
            started = time.perf_counter()
            response = self.get_response(request)
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            request_log.info("%s %s %s %.1f ms", request.method, request.path, response.status_code, duration_ms,
                             extra={"method": request.method, "path": request.path, "status": response.status_code,
                                    "duration_ms": duration_ms})
            return response
        finally:
            # Cleared at the end too: the next request's span starts (in the instrumentation's middleware, before
            # this one) with whatever the thread's context holds.
            context_clear()


class _BrowserOnly:
    def __call__(self, request):
        if request.path_info.startswith(TOKEN_ONLY_PREFIXES):
            return self.get_response(request)
        return super().__call__(request)


class SessionMiddleware(_BrowserOnly, _SessionMiddleware):
    pass


class CsrfViewMiddleware(_BrowserOnly, _CsrfViewMiddleware):
    # process_view is called by Django's handler directly, not through __call__: on the API it still runs and
    # passes, as before, because every API view is csrf_exempt (DRF's APIView).
    pass


class AuthenticationMiddleware(_BrowserOnly, _AuthenticationMiddleware):
    pass


class MessageMiddleware(_BrowserOnly, _MessageMiddleware):
    pass
