"""Portal routes."""
from django.urls import path

from tenants import views

app_name = "portal"
urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("switch/", views.tenant_switch, name="tenant_switch"),
    path("organisations/new/", views.tenant_create, name="tenant_create"),
    path("members/", views.members, name="members"),
    path("members/<int:member_id>/role/", views.member_role, name="member_role"),
    path("members/<int:member_id>/remove/", views.member_remove, name="member_remove"),
    path("members/invitations/<int:invitation_id>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
    path("plans/", views.plans, name="plans"),
    path("tokens/", views.api_tokens, name="api_tokens"),
    path("tokens/<int:token_id>/revoke/", views.api_token_revoke, name="api_token_revoke"),
    path("exports/", views.exports, name="exports"),
    path("exports/<int:export_id>/download/", views.export_download, name="export_download"),
    path("settings/", views.tenant_settings, name="tenant_settings"),
    path("audit/", views.audit_log, name="audit_log"),
]
