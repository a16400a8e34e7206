"""Portal routes of billing, under /billing/."""
from django.urls import path

from billing import views

app_name = "billing"
urlpatterns = [
    path("", views.billing_page, name="page"),
    path("portal/", views.customer_portal, name="portal"),
    path("invoices/<int:pk>/pdf", views.invoice_pdf, name="invoice-pdf"),
    path("plans/", views.plans, name="plans"),
]
