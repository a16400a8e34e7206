"""The tenants app's REST API v1 routes (mounted under /api/v1/ by core.api_urls)."""
from django.urls import path

from core.schema import route_by_method
from tenants import api

urlpatterns = [
    path("tenant", route_by_method(get=api.TenantGetApi, patch=api.TenantUpdateApi), name="api-tenant"),
    path("tenant/plan", api.TenantChangePlanApi.as_view(), name="api-tenant-plan"),
    path("plans", api.PlanListApi.as_view(), name="api-plans"),
    path("members", route_by_method(get=api.MemberListApi, post=api.MemberInviteApi), name="api-members"),
    path("members/<int:pk>",
         route_by_method(get=api.MemberGetApi, patch=api.MemberSetRoleApi, delete=api.MemberRemoveApi),
         name="api-member"),
    path("invitations", api.InvitationListApi.as_view(), name="api-invitations"),
    path("invitations/accept", api.InvitationAcceptApi.as_view(), name="api-invitation-accept"),
    path("invitations/<int:pk>", api.InvitationRevokeApi.as_view(), name="api-invitation"),
    path("tokens", route_by_method(get=api.TokenListApi, post=api.TokenCreateApi), name="api-tokens"),
    path("tokens/<int:pk>", api.TokenRevokeApi.as_view(), name="api-token"),
    path("audit-log", api.AuditLogListApi.as_view(), name="api-audit-log"),
]
