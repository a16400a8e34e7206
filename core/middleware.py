"""The browser's middleware, skipped on the token-only API (/api/v1/) and SCIM (/scim/): session, CSRF, login
and messages.

An API request carries a bearer token and no cookie that Hearth reads, so loading a session, checking a CSRF
cookie or preparing message storage is work for nothing on every call. Everywhere else (portal, admin, accounts,
the API's schema and docs pages) these are Django's own classes, unchanged; the admin's system checks accept them
as subclasses.
"""
from django.contrib.auth.middleware import AuthenticationMiddleware as _AuthenticationMiddleware
from django.contrib.messages.middleware import MessageMiddleware as _MessageMiddleware
from django.contrib.sessions.middleware import SessionMiddleware as _SessionMiddleware
from django.middleware.csrf import CsrfViewMiddleware as _CsrfViewMiddleware

# The REST API and SCIM (an identity provider's directory): bearer tokens only.
TOKEN_ONLY_PREFIXES = ("/api/v1/", "/scim/")


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
