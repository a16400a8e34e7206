"""Hearth's URLs: portal, accounts, admin, REST API and its schema, health."""
from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from core import health
from core.api import endpoint_not_found
from tenants import account_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include(account_views.account_urls)),
    path("accounts/", include("allauth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="api-schema", template_name="api/redoc.html"),
         name="api-docs"),
    path("api/v1/", include("tenants.api_urls")),
    re_path(r"^api/", endpoint_not_found),  # after every API route: JSON 404 for the rest of /api/
    path("healthz", health.healthz, name="healthz"),
    path("workspaces/", include("workspaces.urls")),
    path("usage/", include("metering.urls")),
    path("", include("tenants.urls")),
]
