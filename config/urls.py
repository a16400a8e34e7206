"""Hearth's URLs: portal, accounts, admin, REST API and its schema, health."""
from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from tenants import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-docs"),
    path("api/v1/", include("tenants.api_urls")),
    path("healthz", health.healthz, name="healthz"),
    path("usage/", include("metering.urls")),
    path("", include("tenants.urls")),
]
