"""Production settings: what a deployment must set (SECRET_KEY, ALLOWED_HOSTS) and the hardening on top of base.

Run every process with DJANGO_SETTINGS_MODULE=config.settings.production. `manage.py check --deploy` is clean with
the documented environment (README, "Production"): SECRET_KEY, ALLOWED_HOSTS, an https HEARTH_BASE_URL, a GATEWAY_HOST
on a domain of its own, and SECURE_HSTS_PRELOAD=true once the operator has chosen to preload.
"""
from config.settings.base import *  # noqa: F403
from config.settings.base import HEARTH_BASE_URL, LOG_LEVEL, SILENCED_SYSTEM_CHECKS, env
from core.logs import logging_config

DEBUG = False
# No defaults: a deployment that forgot them refuses to start rather than run with a known key or any Host.
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")
# One JSON object a line, for the log pipeline (LOG_FORMAT=console for a person reading them).
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)

# Served over https (HEARTH_BASE_URL says so): cookies never travel in clear, browsers are told to stay on https.
HTTPS = HEARTH_BASE_URL.startswith("https://")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
# `__Host-` cookies: the browser takes them only Secure, for "/" and without a Domain, so no other host (a workspace
# on another subdomain included) can set or shadow the portal's session or CSRF cookie.
if HTTPS:
    SESSION_COOKIE_NAME = "__Host-sessionid"
    CSRF_COOKIE_NAME = "__Host-csrftoken"
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if HTTPS else "http"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if HTTPS else 0)
# Workspaces live under GATEWAY_HOST, a registrable domain of their own (never a subdomain of the portal's: a
# workspace could otherwise set cookies for the portal), so the portal's subdomains are all its own and https too.
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=HTTPS)
# Preloading is a promise made to the browsers' lists (hstspreload.org) that is slow to take back: the operator's.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients): trust it.
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Django's W003 looks for its own CSRF class by name; MIDDLEWARE has core.middleware's subclass (skipped only on the
# token-only API). tests/config/test_settings.py checks a CsrfViewMiddleware subclass is there instead.
SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "security.W003"]
