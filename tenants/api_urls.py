"""REST API v1 routes (every app's API lives under /api/v1/)."""
from django.urls import include, path

urlpatterns = []
urlpatterns += [path("", include("metering.api_urls"))]
