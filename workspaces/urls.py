"""Portal routes of the workspaces app (under /workspaces/)."""
from django.urls import path

from workspaces import views

app_name = "workspaces"
urlpatterns = [
    path("", views.workspace_list, name="list"),
    path("create", views.workspace_create, name="create"),
    path("<int:pk>/open", views.workspace_open, name="open"),
    path("<int:pk>/delete", views.workspace_delete, name="delete"),
    path("sessions/", views.session_list, name="sessions"),
    path("sessions/<uuid:pk>/close", views.session_close, name="session-close"),
]
