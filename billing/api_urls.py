"""The billing app's REST API v1 routes (mounted under /api/v1/ by core.api_urls)."""
from django.urls import path

from billing import api

urlpatterns = [
    path("billing", api.BillingGetApi.as_view(), name="api-billing"),
]
