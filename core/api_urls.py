"""Everything under /api/: every app's v1 routes mounted in one place, the OpenAPI schema and its docs page, and a
JSON 404 for the rest."""
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView

from core.errors import endpoint_not_found

v1 = [
    path("", include("tenants.api_urls")),
    path("", include("workspaces.api_urls")),
    path("", include("metering.api_urls")),
    path("", include("billing.api_urls")),
    path("", include("sso.api_urls")),
]

urlpatterns = [
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularRedocView.as_view(url_name="api-schema", template_name="api/redoc.html"),
         name="api-docs"),
    path("v1/", include(v1)),
    re_path(r"", endpoint_not_found),  # after every API route
]
