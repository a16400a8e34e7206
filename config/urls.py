"""Hearth's URLs: portal, accounts, admin, the REST API (core.api_urls), SCIM, health and metrics, billing and
Stripe's webhooks."""
from django.contrib import admin
from django.urls import include, path

from core import health, metrics
from tenants import account_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(account_views.account_urls)),
    path("accounts/", include("allauth.urls")),
    path("api/", include("core.api_urls")),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    path("workspaces/", include("workspaces.urls")),
    path("usage/", include("metering.urls")),
    path("billing/", include("billing.urls")),
    path("sso/", include("sso.urls")),
    # SCIM 2.0: an identity provider's directory provisions and removes members (sso/scim_api.py).
    path("scim/v2/", include("sso.scim_urls")),
    # Stripe posts webhooks to /stripe/webhook/<uuid>/ (dj-stripe verifies them; billing.webhooks applies them).
    path("stripe/", include("djstripe.urls", namespace="djstripe")),
    path("", include("tenants.urls")),
]
