"""REST routes of the workspaces app (included under /api/v1/)."""
from django.urls import path

from core.schema import route_by_method
from workspaces import api

urlpatterns = [
    path("templates", api.TemplateListApi.as_view(), name="api-templates"),
    path("workspaces", route_by_method(get=api.WorkspaceListApi, post=api.WorkspaceCreateApi), name="api-workspaces"),
    path("workspaces/<int:pk>", route_by_method(get=api.WorkspaceGetApi, delete=api.WorkspaceDeleteApi),
         name="api-workspace"),
    path("workspaces/<int:pk>/open", api.WorkspaceOpenApi.as_view(), name="api-workspace-open"),
    path("sessions", api.SessionListApi.as_view(), name="api-sessions"),
    path("sessions/<uuid:pk>", api.SessionDetailApi.as_view(), name="api-session"),
    path("sessions/<uuid:pk>/close", api.SessionCloseApi.as_view(), name="api-session-close"),
    path("sessions/<uuid:pk>/heartbeat", api.SessionHeartbeatApi.as_view(), name="api-session-heartbeat"),
]
