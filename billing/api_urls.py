"""The billing app's REST API v1 routes (mounted under /api/v1/ by core.api_urls)."""
from django.urls import path

from billing import api

urlpatterns = [
    path("billing", api.BillingGetApi.as_view(), name="api-billing"),
    path("invoices", api.InvoiceListApi.as_view(), name="api-invoices"),
    path("invoices/<int:pk>/pdf", api.InvoicePdfApi.as_view(), name="api-invoice-pdf"),
]
