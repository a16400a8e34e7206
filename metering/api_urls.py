"""Routes of the usage API, included under /api/v1/."""
from django.urls import path

from metering import api

urlpatterns = [
    path("usage/events", api.UsageEventsIngestApi.as_view(), name="usage-events-ingest"),
    path("usage/meters", api.MeterDeclareApi.as_view(), name="usage-meters-declare"),
    path("usage", api.UsageCurrentApi.as_view(), name="usage-current"),
]
