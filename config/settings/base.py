"""Settings every environment shares, all from the environment (django-environ), with embedded defaults so that
`make run` works on a bare machine. The default module of manage.py, WSGI, ASGI and Celery (development);
production runs `config.settings.production`, the tests `config.settings.test`."""
import os
from datetime import timedelta
from pathlib import Path

import environ
from celery.schedules import crontab, schedule

from core.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = BASE_DIR / "var"

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DEBUG", default=False)


def _local_secret_key(path: Path) -> str:
    """This checkout's own random key, made once (mode 0600) under var/: `make run` needs no SECRET_KEY, and no
    key that anyone else knows ever signs a session. The first process to start writes it; the others read it."""
    import secrets

    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # another process is writing it right now
            key = path.read_text().strip()
            if key:
                return key
            import time
            time.sleep(0.02)
        raise
    key = secrets.token_urlsafe(50)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


# Known keys that must never sign anything outside DEBUG: the one Hearth shipped before keys were generated, and
# Django's startproject placeholder.
INSECURE_SECRET_KEYS = ("insecure-dev-only-set-SECRET_KEY-in-production",)
SECRET_KEY = env.str("SECRET_KEY", default="")
if not SECRET_KEY:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    SECRET_KEY = _local_secret_key(VAR_DIR / "secret_key")
if not DEBUG and (SECRET_KEY in INSECURE_SECRET_KEYS or SECRET_KEY.startswith("django-insecure-")):
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured("SECRET_KEY is a published development key; set a random one (or unset it for "
                               "this checkout's own, kept in var/secret_key).")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]", ".localhost", "testserver"])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])

HEARTH_PORT = env.int("HEARTH_PORT", default=8000)
HEARTH_GATEWAY_PORT = env.int("HEARTH_GATEWAY_PORT", default=8001)
# Public base URL of the portal, used in mails and links from the gateway's pages.
HEARTH_BASE_URL = env.str("HEARTH_BASE_URL", default=f"http://localhost:{HEARTH_PORT}")
# One name per Hearth installation: it labels every container so two installs can share an engine.
HEARTH_INSTANCE = env.str("HEARTH_INSTANCE", default="hearth")
# Firewall chains keeping workspaces off the host, private ranges and each other (workspaces/network.py).
HEARTH_NETWORK_POLICY = env.bool("HEARTH_NETWORK_POLICY", default=True)
# A counter in each local container's network namespace for egress_bytes (docs/RUNTIME.md).
HEARTH_EGRESS_COUNTER = env.bool("HEARTH_EGRESS_COUNTER", default=True)
# Containers run as host uids from here up, one per container (workspaces.pool.provisioning.container_uid).
WORKSPACES_UID_BASE = env.int("WORKSPACES_UID_BASE", default=1_000_000_000)
STORAGE_ROOT = Path(env.str("STORAGE_ROOT", default=str(VAR_DIR / "storage")))
DOCKER_HOST = env.str("DOCKER_HOST", default="unix:///var/run/docker.sock")
REDIS_URL = env.str("REDIS_URL", default="redis://127.0.0.1:6379/0")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.sites",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "allauth",
    "allauth.account",
    # Social sign-in for self-serve sign-up; each provider is on only when configured (SOCIAL_* below).
    "allauth.socialaccount",
    "allauth.socialaccount.providers.github",
    "allauth.socialaccount.providers.openid_connect",
    "djstripe",
    "tenants",
    "metering",
    "workspaces",
    "billing",
    "sso",
    "insights",
]

# Session, CSRF, login and messages: Django's own, skipped on the token-only API (/api/v1/; core/middleware.py).
MIDDLEWARE = [
    # First: inside the request's span when traced (Django's instrumentation puts its own before everything).
    "core.middleware.RequestContextMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "core.request_limits.BodySizeLimitMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "core.middleware.SessionMiddleware",
    "sso.saml.SamlSessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "core.middleware.CsrfViewMiddleware",
    "core.middleware.AuthenticationMiddleware",
    "core.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "allauth.account.middleware.AccountMiddleware",
    # A session signed in through a tenant's IdP ends once its user has left that tenant (removed, SCIM).
    "tenants.middleware.PortalSessionMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "tenants.context_processors.current_tenant",
                "billing.context_processors.billing_banner",
            ],
        },
    },
]

# --- the database: PostgreSQL only -------------------------------------------------------------------------------
# The default is the local database `make run` creates (scripts/run.sh: role and database `hearth`, trusted on the
# loopback); DATABASE_URL points anywhere else.
DATABASES = {"default": env.db("DATABASE_URL", default="postgres://hearth@127.0.0.1:5432/hearth")}
DATABASES["default"].setdefault("ATOMIC_REQUESTS", False)
# Persistent database connections: opening a PostgreSQL connection per request was about 35 ms of a
# 60 ms API call on this machine (bench/api_latency.py). DB_CONN_MAX_AGE=0 turns it off.
DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("DB_CONN_MAX_AGE", default=60))
# A health check is a `SELECT 1` round trip before every request's first query: a third of an API read's server time
# here (bench/api_latency.py). Without it, after PostgreSQL restarts, each worker thread's first query fails once and
# Django reconnects for the next request. DB_CONN_HEALTH_CHECKS=true brings the check back.
DATABASES["default"].setdefault("CONN_HEALTH_CHECKS", env.bool("DB_CONN_HEALTH_CHECKS", default=False))
# The open's and the ingestion's hot-path statements are prepared (planned once per connection, config/db.py); turn
# off behind a transaction-pooling PgBouncer older than 1.21.
DATABASE_PREPARED_STATEMENTS = env.bool("DATABASE_PREPARED_STATEMENTS", default=True)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- accounts ----------------------------------------------------------------------------------------------------
AUTH_USER_MODEL = "tenants.User"
AUTHENTICATION_BACKENDS = [
    "django.contrib.auth.backends.ModelBackend",
    "allauth.account.auth_backends.AuthenticationBackend",
    # Only the callback of a tenant's OIDC identity provider (sso.oidc); passwords go through the two above.
    "sso.oidc.TenantOidcBackend",
    # Only the ACS of a tenant's SAML identity provider (sso.saml), after pysaml2 has checked the response.
    "sso.saml.TenantSamlBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

SITE_ID = 1
LOGIN_URL = "account_login"
LOGIN_REDIRECT_URL = "portal:dashboard"
LOGOUT_REDIRECT_URL = "account_login"

# allauth: email is the identity; a new account verifies its address before it can log in.
ACCOUNT_LOGIN_METHODS = {"email"}
ACCOUNT_SIGNUP_FIELDS = ["email*", "password1*", "password2*"]
ACCOUNT_USER_MODEL_USERNAME_FIELD = None
ACCOUNT_EMAIL_VERIFICATION = env.str("ACCOUNT_EMAIL_VERIFICATION", default="mandatory")
ACCOUNT_CONFIRM_EMAIL_ON_GET = False
ACCOUNT_LOGIN_ON_EMAIL_CONFIRMATION = True
ACCOUNT_LOGOUT_ON_GET = False
ACCOUNT_UNIQUE_EMAIL = True
ACCOUNT_ADAPTER = "tenants.accounts.AccountAdapter"
ACCOUNT_SIGNUP_FORM_CLASS = "tenants.accounts.SignupForm"
ACCOUNT_DEFAULT_HTTP_PROTOCOL = env.str("ACCOUNT_DEFAULT_HTTP_PROTOCOL", default="http")
# Rate limits (allauth's: failed logins, signups, password resets, mail confirmations) count in Redis, so every web
# process shares one count per client. The client is REMOTE_ADDR unless a proxy is trusted: ALLAUTH_TRUSTED_PROXY_COUNT
# proxies of yours append to X-Forwarded-For, or ALLAUTH_TRUSTED_CLIENT_IP_HEADER names the header yours sets.
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": env.str("CACHE_URL", default=REDIS_URL),
        "KEY_PREFIX": f"{HEARTH_INSTANCE}:cache",
        "TIMEOUT": 300,
    },
}
ALLAUTH_TRUSTED_PROXY_COUNT = env.int("ALLAUTH_TRUSTED_PROXY_COUNT", default=0)
ALLAUTH_TRUSTED_CLIENT_IP_HEADER = env.str("ALLAUTH_TRUSTED_CLIENT_IP_HEADER", default="") or None
# Social sign-in (docs/SSO_PROVIDERS.md): GitHub (OAuth2) and Google (OpenID Connect), each on only when its client
# id and secret are set; otherwise no button and its URLs answer 404 (tenants.accounts.SocialAccountAdapter). The
# apps live in settings, not in the database. An account links to an existing one only by an address the provider
# says is verified (allauth's email authentication); members of a tenant enforcing SSO go through their IdP.
SOCIAL_GITHUB_CLIENT_ID = env.str("SOCIAL_GITHUB_CLIENT_ID", default="")
SOCIAL_GITHUB_CLIENT_SECRET = env.str("SOCIAL_GITHUB_CLIENT_SECRET", default="")
# GitHub Enterprise Server: its web URL (allauth reads the API at <url>/api/v3); empty: github.com.
SOCIAL_GITHUB_URL = env.str("SOCIAL_GITHUB_URL", default="")
SOCIAL_GOOGLE_CLIENT_ID = env.str("SOCIAL_GOOGLE_CLIENT_ID", default="")
SOCIAL_GOOGLE_CLIENT_SECRET = env.str("SOCIAL_GOOGLE_CLIENT_SECRET", default="")
# The OpenID issuer (its /.well-known/openid-configuration is read); Google's unless overridden.
SOCIAL_GOOGLE_SERVER_URL = env.str("SOCIAL_GOOGLE_SERVER_URL", default="https://accounts.google.com")
SOCIALACCOUNT_PROVIDERS = {}
if SOCIAL_GITHUB_CLIENT_ID and SOCIAL_GITHUB_CLIENT_SECRET:
    SOCIALACCOUNT_PROVIDERS["github"] = {
        "APP": {"client_id": SOCIAL_GITHUB_CLIENT_ID, "secret": SOCIAL_GITHUB_CLIENT_SECRET},
        "SCOPE": ["read:user", "user:email"],
        **({"GITHUB_URL": SOCIAL_GITHUB_URL} if SOCIAL_GITHUB_URL else {}),
    }
if SOCIAL_GOOGLE_CLIENT_ID and SOCIAL_GOOGLE_CLIENT_SECRET:
    SOCIALACCOUNT_PROVIDERS["openid_connect"] = {"APPS": [{
        "provider_id": "google", "name": "Google",
        "client_id": SOCIAL_GOOGLE_CLIENT_ID, "secret": SOCIAL_GOOGLE_CLIENT_SECRET,
        "settings": {"server_url": SOCIAL_GOOGLE_SERVER_URL, "scope": ["openid", "email", "profile"],
                     "oauth_pkce_enabled": True},
    }]}
SOCIALACCOUNT_ADAPTER = "tenants.accounts.SocialAccountAdapter"
SOCIALACCOUNT_QUERY_EMAIL = True
SOCIALACCOUNT_EMAIL_REQUIRED = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION = True
SOCIALACCOUNT_EMAIL_AUTHENTICATION_AUTO_CONNECT = True
SOCIALACCOUNT_STORE_TOKENS = False
SOCIALACCOUNT_REQUESTS_TIMEOUT = env.int("SOCIALACCOUNT_REQUESTS_TIMEOUT", default=10)
# Portal: account mails say where they come from.
ACCOUNT_EMAIL_SUBJECT_PREFIX = env.str("ACCOUNT_EMAIL_SUBJECT_PREFIX", default="[Hearth] ")
# Invitations stay valid this long.
INVITATION_TTL = timedelta(days=env.int("INVITATION_TTL_DAYS", default=7))
# Tenants one user may create and own (tenants.policy.tenants_owned_check; staff onboarding in admin is exempt):
# any plan, and of those on a free plan (a paid tenant starts on Free until it is paid, so it counts here until then).
TENANTS_MAX_OWNED_PER_USER = env.int("TENANTS_MAX_OWNED_PER_USER", default=5)
TENANTS_MAX_FREE_OWNED_PER_USER = env.int("TENANTS_MAX_FREE_OWNED_PER_USER", default=1)

EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.console.EmailBackend")
EMAIL_HOST = env.str("EMAIL_HOST", default="127.0.0.1")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="Hearth <noreply@hearth.localhost>")
# A slow mail server must not hold a portal request (invitations are mailed while the inviter waits).
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = VAR_DIR / "media"
# Offboarding archives: downloadable by the tenant's owner only, never served as static files.
EXPORT_ROOT = Path(env.str("EXPORT_ROOT", default=str(VAR_DIR / "exports")))

# --- single sign-on (sso/): each tenant's identity providers; docs/SSO.md --------------------------------------
# Fernet keys for the IdPs' client secrets, newest first (rotation: prepend a new key, re-save, drop the old one).
# Empty: one key derived from SECRET_KEY (changing SECRET_KEY then means entering the secrets again).
SSO_ENCRYPTION_KEYS = env.list("SSO_ENCRYPTION_KEYS", default=[])
# Domain verification reads TXT records from these resolvers ("ip" or "ip:port"); empty: the system's.
SSO_DNS_NAMESERVERS = env.list("SSO_DNS_NAMESERVERS", default=[])
SSO_DNS_TIMEOUT = env.float("SSO_DNS_TIMEOUT", default=5.0)
# An IdP's discovery document is read again after this long.
SSO_DISCOVERY_CACHE_SECONDS = env.int("SSO_DISCOVERY_CACHE_SECONDS", default=300)
# Clock skew allowed on an ID token's exp and iat.
SSO_CLOCK_LEEWAY = env.int("SSO_CLOCK_LEEWAY", default=60)
# mozilla-django-oidc: one callback URL for every tenant's provider (the state says which); PKCE and nonce on.
OIDC_AUTHENTICATION_CALLBACK_URL = "sso:oidc-callback"
OIDC_USE_PKCE = True
OIDC_USE_NONCE = True
OIDC_TIMEOUT = env.float("OIDC_TIMEOUT", default=10.0)
# SAML (djangosaml2 / pysaml2, sso/saml.py): an IdP's metadata_url is read again after this long.
SSO_SAML_METADATA_CACHE_SECONDS = env.int("SSO_SAML_METADATA_CACHE_SECONDS", default=3600)
# Debian's xmlsec1 (scripts/services.sh installs it); empty: found on the PATH.
SSO_SAML_XMLSEC_BINARY = env.str("SSO_SAML_XMLSEC_BINARY", default="")
# AuthnRequests go by HTTP-Redirect; the IdP answers by HTTP-POST to /sso/saml/<id>/acs/.
SAML_DEFAULT_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
# djangosaml2 would look for django-csp to loosen a Content-Security-Policy Hearth does not set on these pages.
SAML_CSP_HANDLER = ""

# --- the API (core/) ---------------------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.ApiTokenAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "core.schema.AutoSchema",
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "EXCEPTION_HANDLER": "core.errors.exception_handler",
    "UNAUTHENTICATED_USER": None,
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Hearth API",
    "DESCRIPTION": "Workspaces in the browser: tenants, members, workspaces, sessions and usage.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # One view per operation; URLs with several methods are expanded for the schema.
    "PREPROCESSING_HOOKS": ["core.schema.expand_method_routes"],
    "COMPONENT_SPLIT_REQUEST": True,
    # The API docs page serves Redoc from the sidecar package, not a CDN: it works offline.
    "REDOC_DIST": "SIDECAR",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
}

# --- billing ---------------------------------------------------------------------------------------------------
# With STRIPE_SECRET_KEY unset Hearth bills through the offline Stripe (`python -m billing.stripe_emulator`, started
# by `make run`) at STRIPE_API_HOST with a test key; set STRIPE_SECRET_KEY and STRIPE_WEBHOOK_SECRET for Stripe itself.
STRIPE_OFFLINE = not env.str("STRIPE_SECRET_KEY", default="")
STRIPE_SECRET_KEY = env.str("STRIPE_SECRET_KEY", default="") or env.str(
    "STRIPE_TEST_SECRET_KEY", default="sk_test_" + "hearthoffline" * 2)
STRIPE_LIVE_MODE = STRIPE_SECRET_KEY.startswith(("sk_live_", "rk_live_"))
STRIPE_TEST_SECRET_KEY = "" if STRIPE_LIVE_MODE else STRIPE_SECRET_KEY
STRIPE_LIVE_SECRET_KEY = STRIPE_SECRET_KEY if STRIPE_LIVE_MODE else ""
# One address for every Stripe call (env STRIPE_API_HOST): the SDK through dj-stripe, the catalogue, subscriptions and
# the billing provider's meter events.
STRIPE_API_BASE = env.str("STRIPE_API_HOST",
                          default="http://127.0.0.1:8420" if STRIPE_OFFLINE else "https://api.stripe.com")
if STRIPE_OFFLINE or env.str("STRIPE_API_HOST", default=""):
    # dj-stripe points the stripe SDK here when the setting exists at all, so it is left undefined for Stripe itself.
    STRIPE_API_HOST = STRIPE_API_BASE
# Known in advance so that the offline Stripe can be told it (billing_stripe_setup); Stripe's dashboard shows the
# real one when the endpoint is made there.
STRIPE_WEBHOOK_SECRET = env.str("STRIPE_WEBHOOK_SECRET", default="whsec_hearth_offline_" + "0" * 24)
DJSTRIPE_WEBHOOK_SECRET = STRIPE_WEBHOOK_SECRET
DJSTRIPE_FOREIGN_KEY_TO_FIELD = "id"
DJSTRIPE_USE_NATIVE_JSONFIELD = True
# Each tenant is one Stripe customer (dj-stripe's Customer.subscriber); billing mail goes to its owners.
DJSTRIPE_SUBSCRIBER_MODEL = "tenants.Tenant"
DJSTRIPE_SUBSCRIBER_MODEL_REQUEST_CALLBACK = "billing.subscriptions.tenant_of_request"
# dj-stripe would otherwise link a customer to whatever tenant a Checkout Session's or customer's metadata names;
# only the customer Hearth creates for a tenant is that tenant's (billing.subscriptions.customer_get_or_create).
DJSTRIPE_SUBSCRIBER_CUSTOMER_KEY = ""
# past_due: opens keep working this many days (banner, mail to owners); then they answer 402 payment_required.
BILLING_GRACE_DAYS = env.int("BILLING_GRACE_DAYS", default=7)
# The Stripe billing meter behind every plan's metered overage price (billing_sync_plans creates it).
# Its unit is an hour (the plans' overage is priced per hour): usage must be reported to it in hours.
# The Stripe provider sends its meter events under this name too (billing.providers.stripe: values in hours).
BILLING_METER_EVENT_NAME = env.str("BILLING_METER_EVENT_NAME", default="workspace_hours")
# Seconds per Stripe HTTP call (webhook set-up, the billing provider's meter events).
STRIPE_TIMEOUT = env.float("STRIPE_TIMEOUT", default=10.0)
# The billing-event queue (billing.outbox): failures before a delivery is dead (12: about 3.4 h), its back-off.
BILLING_DELIVERY_MAX_ATTEMPTS = env.int("BILLING_DELIVERY_MAX_ATTEMPTS", default=12)
BILLING_DELIVERY_BACKOFF_BASE = env.int("BILLING_DELIVERY_BACKOFF_BASE", default=10)
BILLING_DELIVERY_BACKOFF_MAX = env.int("BILLING_DELIVERY_BACKOFF_MAX", default=3600)
# Deliveries per claimed batch; seconds a drain keeps taking batches (well inside Celery's time limits); remote
# provider calls in flight per drain.
BILLING_DRAIN_BATCH = env.int("BILLING_DRAIN_BATCH", default=100)
BILLING_DRAIN_TIME_BUDGET = env.int("BILLING_DRAIN_TIME_BUDGET", default=30)
BILLING_DRAIN_CONCURRENCY = env.int("BILLING_DRAIN_CONCURRENCY", default=8)
# Hearth's own invoices (contracts paid by bank transfer): `<prefix>-<year>-<sequence>`, and what they print.
BILLING_INVOICE_NUMBER_PREFIX = env.str("BILLING_INVOICE_NUMBER_PREFIX", default="HRT")
BILLING_INVOICE_ISSUER = env.str("BILLING_INVOICE_ISSUER", default="Hearth")
BILLING_INVOICE_PAYMENT_TERMS = env.str("BILLING_INVOICE_PAYMENT_TERMS",
                                        default="Payable by bank transfer within 30 days.")

# The offline Stripe is meant: dj-stripe's warning about STRIPE_API_HOST outside DEBUG does not apply.
SILENCED_SYSTEM_CHECKS = ["djstripe.W002"] if STRIPE_OFFLINE else []

# --- Celery ------------------------------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default=REDIS_URL)
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_SOFT_TIME_LIMIT = 60
CELERY_TASK_TIME_LIMIT = 90
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=False)
# A request must not hang on a dead broker: the periodic ticks deliver whatever was not enqueued.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 2, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}
CELERY_BROKER_CONNECTION_TIMEOUT = 2
# Installs sharing one Redis (and test runs beside `make run`) never take each other's tasks.
CELERY_BROKER_TRANSPORT_OPTIONS = {"global_keyprefix": f"{HEARTH_INSTANCE}:"}
# The periodic ticks that drive Hearth's loops, all of them; each task is idempotent and safe to run late or twice.
CELERY_BEAT_SCHEDULE = {
    "outbox-drain": {"task": "tenants.tasks.outbox_drain", "schedule": schedule(timedelta(seconds=10))},
    "workspaces-pool-fill": {"task": "workspaces.tasks.pool_fill", "schedule": schedule(timedelta(seconds=5))},
    "workspaces-reclaim": {"task": "workspaces.tasks.sessions_reclaim", "schedule": schedule(timedelta(seconds=30))},
    "workspaces-reconcile": {"task": "workspaces.tasks.reconcile", "schedule": schedule(timedelta(seconds=20))},
    "metering-thresholds": {"task": "metering.tasks.usage_thresholds_scan", "schedule": schedule(timedelta(minutes=1))},
    "metering-storage": {"task": "metering.tasks.storage_sample_all", "schedule": schedule(timedelta(hours=1))},
    "metering-seats": {"task": "metering.tasks.seats_sample_all", "schedule": schedule(timedelta(hours=1))},
    "billing-deliveries-drain": {"task": "billing.tasks.deliveries_drain", "schedule": schedule(timedelta(seconds=10))},
    "billing-usage-report": {"task": "billing.tasks.usage_report", "schedule": schedule(timedelta(minutes=15))},
    # Hourly: the first run after a month's late-event grace (48 h) issues its invoices.
    "billing-invoices-issue": {"task": "billing.tasks.invoices_issue", "schedule": schedule(timedelta(hours=1))},
    # A past-due tenant whose grace ran out is suspended for payment within a minute (its sessions end).
    "billing-grace-expire": {"task": "billing.tasks.payment_grace_expire", "schedule": schedule(timedelta(minutes=1))},
    # Nightly, off-peak (UTC): the previous and the open billing month are reconciled; gaps appear in admin.
    "billing-reconcile": {"task": "billing.tasks.reconcile", "schedule": crontab(hour=3, minute=30)},
}

# --- observability: logs and traces (docs/OBSERVABILITY.md) ----------------------------------------------------
# Log lines carry the tenant, user, workspace, session and trace ids of their work (core/logs.py): "console" is for a
# person (`make run`), "json" one object a line for a log pipeline (production's default, config/settings/production).
LOG_LEVEL = env.str("LOG_LEVEL", default="INFO")
LOG_FORMAT = env.str("LOG_FORMAT", default="console")
LOGGING = logging_config(log_format=LOG_FORMAT, level=LOG_LEVEL)
# One line per request (method, path, status, duration_ms) from core.middleware.RequestContextMiddleware.
LOG_REQUESTS = env.bool("LOG_REQUESTS", default=True)
# The worker's lines (Celery's own included) through LOGGING too, not Celery's own format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Traces are set up before these settings load (config/wsgi.py, config/celery.py, the gateway and engine_events
# commands) from OpenTelemetry's own variables, read by core/telemetry.py and the SDK: off unless OTEL_TRACES_EXPORTER
# is otlp (or console) or OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT is set; OTEL_SDK_DISABLED=true wins; OTEL_SERVICE_NAME
# (default hearth-<process>), OTEL_TRACES_SAMPLER(_ARG), OTEL_BSP_* as the SDK documents them. What Hearth adds:
# the gateway's first proxied request of an open joins the open's trace through HAProxy's log (workspaces/gateway/
# tracing.py); this many seconds after the open it is no longer looked for.
GATEWAY_TRACE_FIRST_REQUEST_TTL = env.int("GATEWAY_TRACE_FIRST_REQUEST_TTL", default=600)

# --- workspaces: the pool, reclaim and the reconciler ----------------------------------------------
# A PROVISIONING row older than this is given up by the reconciler (its worker died); keep it under 60 s.
WORKSPACES_PROVISION_TIMEOUT = env.int("WORKSPACES_PROVISION_TIMEOUT", default=40)
# How long a new container may take until its port answers.
WORKSPACES_READY_TIMEOUT = env.float("WORKSPACES_READY_TIMEOUT", default=30.0)
# After a failed provisioning the pool of that template and node waits this long before trying again.
WORKSPACES_FAILURE_BACKOFF = env.int("WORKSPACES_FAILURE_BACKOFF", default=30)
# The auto-registered local node's capacity: workspaces idle most of the time, so CPU is overcommitted.
WORKSPACES_LOCAL_CPU_OVERCOMMIT = env.float("WORKSPACES_LOCAL_CPU_OVERCOMMIT", default=8.0)
WORKSPACES_LOCAL_MEMORY_OVERCOMMIT = env.float("WORKSPACES_LOCAL_MEMORY_OVERCOMMIT", default=2.0)
# The pool asks a new container for this page once before it counts as warm (code-server starts its IDE server on
# the first page request); "" turns it off.
WORKSPACES_WARMUP_PATH = env.str("WORKSPACES_WARMUP_PATH", default="/")
# workspaces (burst): containers a node starts at the same time (pool fills and cold opens of every process together;
# an engine starts them at a fixed rate, so more at once only makes every one of them later: bench/cold_phases.py).
WORKSPACES_PROVISION_CONCURRENCY = env.int("WORKSPACES_PROVISION_CONCURRENCY", default=16)
# The warm pool that follows demand (workspaces.pool.demand, workspaces.pool.target; docs/POOL.md): the lead time used
# before a template has cold starts to measure, how many recent starts its median takes, how long the pool must have
# held more than its target before the surplus is released, and the demand rule's windows.
WORKSPACES_POOL_LEAD_TIME_DEFAULT = env.float("WORKSPACES_POOL_LEAD_TIME_DEFAULT", default=3.0)
WORKSPACES_POOL_LEAD_TIME_SAMPLES = env.int("WORKSPACES_POOL_LEAD_TIME_SAMPLES", default=20)
WORKSPACES_POOL_SHRINK_HOLD = env.float("WORKSPACES_POOL_SHRINK_HOLD", default=120.0)
WORKSPACES_POOL_DEMAND_WINDOW = env.float("WORKSPACES_POOL_DEMAND_WINDOW", default=300.0)
WORKSPACES_POOL_DEMAND_LOOKAHEAD = env.float("WORKSPACES_POOL_DEMAND_LOOKAHEAD", default=900.0)
WORKSPACES_POOL_HISTORY_DAYS = env.int("WORKSPACES_POOL_HISTORY_DAYS", default=7)
# A cold open waits this long for a container (its own, or one warming up in the pool) before answering 503.
WORKSPACES_COLD_START_WAIT = env.float("WORKSPACES_COLD_START_WAIT", default=60.0)
# A `starting` session still without a container this many seconds after its open gets its start enqueued again by
# the reclaim tick (its task was lost with a killed worker or a restarted broker).
WORKSPACES_STARTING_REQUEUE_AFTER = env.float("WORKSPACES_STARTING_REQUEUE_AFTER", default=15.0)
# The API and the portal answer a cold open at once with the session `starting` and a worker starts its container
# (workspaces.tasks.session_start); False: the web request waits for it as before (up to WORKSPACES_COLD_START_WAIT).
WORKSPACES_COLD_OPEN_ASYNC = env.bool("WORKSPACES_COLD_OPEN_ASYNC", default=True)
# How often the cold open at the head of its template's line looks for a free slot or a warm container (the rest wait
# in PostgreSQL at no cost; this process's own releases wake it at once).
WORKSPACES_POOL_POLL_INTERVAL = env.float("WORKSPACES_POOL_POLL_INTERVAL", default=0.05)
# Activity is the browser sending more than this many bytes (requests, WebSocket frames) between two reclaim ticks:
# an idle code-server tab sends keep-alives of about 20 bytes every 5 s on each of its two WebSockets (~500 bytes
# a tick), a keystroke in the editor a few hundred bytes.
WORKSPACES_ACTIVITY_MIN_CLIENT_BYTES = env.int("WORKSPACES_ACTIVITY_MIN_CLIENT_BYTES", default=1024)
# Fair share: the most of a node's capacity (containers, CPU, memory; the largest) one tenant's live sessions may hold,
# so one tenant cannot take a node others need; a tenant may always have one container on a node. 1.0: no limit.
WORKSPACES_TENANT_NODE_SHARE = env.float("WORKSPACES_TENANT_NODE_SHARE", default=0.5)
# CPU weight (cgroup cpu.shares; 1024 normal) of a warm container until its claim sets the plan's: a refill's
# code-server start then yields to the claimed containers' first page loads (docs/POOL.md, bench/browser_open.py).
WORKSPACES_WARM_CPU_WEIGHT = env.int("WORKSPACES_WARM_CPU_WEIGHT", default=64)
# workspaces.runtime: seconds before a Docker engine that does not answer counts as unavailable.
HEARTH_DOCKER_TIMEOUT = env.float("HEARTH_DOCKER_TIMEOUT", default=15.0)
# Node health (workspaces.pool.health): a node with this many failed engine calls in a row, or without an answer for
# this many seconds, takes no claims and no new containers until its engine answers again.
WORKSPACES_NODE_FAILED_CALLS = env.int("WORKSPACES_NODE_FAILED_CALLS", default=2)
WORKSPACES_NODE_HEARTBEAT_TIMEOUT = env.float("WORKSPACES_NODE_HEARTBEAT_TIMEOUT", default=60.0)
# The engine-event follower (`manage.py engine_events`) pings each engine this often (seconds): the heartbeat.
WORKSPACES_NODE_HEARTBEAT = env.float("WORKSPACES_NODE_HEARTBEAT", default=5.0)
# Retry-After (seconds) of a 503 that only time fixes (no healthy node with room, a node that does not answer).
WORKSPACES_RETRY_AFTER = env.int("WORKSPACES_RETRY_AFTER", default=10)
# Only when several engines share one host: engine URL -> subnet of its Hearth network ("url=cidr,url=cidr").
HEARTH_NETWORK_SUBNETS = env.dict("HEARTH_NETWORK_SUBNETS", default={})

# --- the egress proxy (tinyproxy) of plans with internet_access=proxy (workspaces/egress_proxy.py) ----------------
# Its port on the instance's bridge gateway; the open plans' unfiltered proxy takes the next one. 0: no proxy
# (`proxy` plans then reach nothing outside, as `none`).
EGRESS_PROXY_PORT = env.int("EGRESS_PROXY_PORT", default=3128)
# Host names reachable through it: `name` is that host exactly, `*.name` its subdomains; IPv4 addresses too.
EGRESS_PROXY_ALLOW = env.list("EGRESS_PROXY_ALLOW", default=[
    "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "registry.yarnpkg.com", "github.com",
    "codeload.github.com", "objects.githubusercontent.com", "raw.githubusercontent.com",
    "proxy.golang.org", "sum.golang.org", "crates.io", "static.crates.io",
    "index.crates.io", "rubygems.org", "open-vsx.org", "*.open-vsx.org",
])
# The proxy drops to this user; it must be its own: the firewall refuses private addresses to every process of it.
EGRESS_PROXY_USER = env.str("EGRESS_PROXY_USER", default="tinyproxy")
EGRESS_PROXY_RUN_DIR = Path(env.str("EGRESS_PROXY_RUN_DIR", default=str(VAR_DIR / "egress-proxy")))
TINYPROXY_BIN = env.str("TINYPROXY_BIN", default="tinyproxy")

# --- metrics (core/metrics.py; docs/OBSERVABILITY.md) ---------------------------------------------------------------
# prometheus_client's multiprocess mode: every web and worker process writes its figures here and GET /metrics adds
# them up. Set in the environment before anything loads prometheus_client (which reads it once, at import).
PROMETHEUS_MULTIPROC_DIR = env.str("PROMETHEUS_MULTIPROC_DIR", default=str(VAR_DIR / "metrics"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = PROMETHEUS_MULTIPROC_DIR
try:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
except OSError as exc:
    from django.core.exceptions import ImproperlyConfigured

    raise ImproperlyConfigured(f"PROMETHEUS_MULTIPROC_DIR={PROMETHEUS_MULTIPROC_DIR} cannot be created ({exc}); "
                               "every process writes its metrics there: point it at a writable directory.") from exc
# Networks (CIDRs) whose clients read /metrics without a token, besides loopback: your Prometheus's. Anyone else
# needs a staff user's API token.
METRICS_ALLOWED_NETWORKS = env.list("METRICS_ALLOWED_NETWORKS", default=[])
# hearth_usage_total: tenants with the most events this month get their own `tenant` label, the rest "other";
# the set is read again this often (seconds) in each process.
METRICS_USAGE_TOP_TENANTS = env.int("METRICS_USAGE_TOP_TENANTS", default=20)
METRICS_USAGE_TOP_REFRESH = env.int("METRICS_USAGE_TOP_REFRESH", default=300)

# --- the gateway (HAProxy): workspaces answer at <host_key>.<GATEWAY_HOST>:<HEARTH_GATEWAY_PORT> ----------------
GATEWAY_HOST = env.str("GATEWAY_HOST", default="localhost")
GATEWAY_SCHEME = env.str("GATEWAY_SCHEME", default="http")
# "kid1:secret1,kid2:secret2": the first signs, all are accepted. Unset: a per-install key under GATEWAY_RUN_DIR.
GATEWAY_JWT_KEYS = env.str("GATEWAY_JWT_KEYS", default="")
GATEWAY_TOKEN_TTL = env.int("GATEWAY_TOKEN_TTL", default=8 * 3600)
GATEWAY_AUDIENCE = env.str("GATEWAY_AUDIENCE", default="hearth-gateway")
GATEWAY_ISSUER = env.str("GATEWAY_ISSUER", default="hearth")
GATEWAY_RUN_DIR = Path(env.str("GATEWAY_RUN_DIR", default=str(VAR_DIR / "gateway")))
# HAProxy's own stats page (/stats) and Prometheus exporter (/metrics) on this port (0: none); HAProxy serves them
# without any check, so the address is loopback unless a private network's Prometheus must reach it (docs/GATEWAY.md).
GATEWAY_STATS_PORT = env.int("GATEWAY_STATS_PORT", default=0)
GATEWAY_STATS_ADDRESS = env.str("GATEWAY_STATS_ADDRESS", default="127.0.0.1")
HAPROXY_BIN = env.str("HAPROXY_BIN", default="haproxy")
# Remember tokens that passed every check for a route (exp still checked per request): about 10 us less per request.
GATEWAY_TOKEN_CACHE = env.bool("GATEWAY_TOKEN_CACHE", default=True)
# PEM (certificate + key) for *.<GATEWAY_HOST>: HAProxy terminates TLS itself (set GATEWAY_SCHEME=https too).
GATEWAY_TLS_CERT = env.str("GATEWAY_TLS_CERT", default="")
# HAProxy threads (0: one per CPU). One is enough for ~40k checked requests/s and leaves the other cores to workspaces.
GATEWAY_NBTHREAD = env.int("GATEWAY_NBTHREAD", default=1)
# Dotted path to a callable listing every live route as (host_key, session_id, address): restored at start.
GATEWAY_ROUTES_SOURCE = env.str("GATEWAY_ROUTES_SOURCE", default="workspaces.selectors.live_routes")

# --- metering: ingestion limits and where "upgrade" points ------------------------------------------------------
METERING_MAX_BATCH = env.int("METERING_MAX_BATCH", default=1000)
# Events more than this far in the future are rejected (clock skew of the reporting service).
METERING_FUTURE_SKEW = timedelta(seconds=env.int("METERING_FUTURE_SKEW_SECONDS", default=300))
# The previous billing month accepts late events for this long after it ends; then it is closed.
METERING_LATE_EVENT_GRACE = timedelta(hours=env.int("METERING_LATE_EVENT_GRACE_HOURS", default=48))
METERING_UPGRADE_URL = env.str("METERING_UPGRADE_URL", default=f"{HEARTH_BASE_URL}/billing/plans/")
