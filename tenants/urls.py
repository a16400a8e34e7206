"""Portal routes."""
from django.urls import path

from tenants import views

app_name = "portal"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
