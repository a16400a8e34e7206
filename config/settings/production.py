"""Production settings: what a deployment must set (SECRET_KEY, ALLOWED_HOSTS) and the hardening on top of base.

Run every process with DJANGO_SETTINGS_MODULE=config.settings.production; `manage.py check --deploy` with SECRET_KEY,
ALLOWED_HOSTS and an https HEARTH_BASE_URL set leaves two warnings, on purpose: HSTS for subdomains and preload.
"""
from config.settings.base import *  # noqa: F403
from config.settings.base import HEARTH_BASE_URL, SILENCED_SYSTEM_CHECKS, env

DEBUG = False
# No defaults: a deployment that forgot them refuses to start rather than run with a known key or any Host.
SECRET_KEY = env.str("SECRET_KEY")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS")

# Served over https (HEARTH_BASE_URL says so): cookies never travel in clear, browsers are told to stay on https.
HTTPS = HEARTH_BASE_URL.startswith("https://")
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = HTTPS
ACCOUNT_DEFAULT_HTTP_PROTOCOL = "https" if HTTPS else "http"
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=HTTPS)
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=365 * 24 * 3600 if HTTPS else 0)
# Off unless set: workspaces answer on subdomains of GATEWAY_HOST, which may be served over http (GATEWAY_SCHEME).
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=False)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
# Behind a TLS-terminating proxy that sets X-Forwarded-Proto (and strips it from clients): trust it.
if env.bool("SECURE_PROXY_SSL_HEADER", default=False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
# Django's W003 looks for its own CSRF class by name; MIDDLEWARE has core.middleware's subclass (skipped only on the
# token-only API). tests/config/test_settings.py checks a CsrfViewMiddleware subclass is there instead.
SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "security.W003"]
