"""The sso app's REST API v1 routes (mounted under /api/v1/ by core.api_urls)."""
from django.urls import path

from core.schema import route_by_method
from sso import api

urlpatterns = [
    path("identity-providers", route_by_method(get=api.IdentityProviderListApi, post=api.IdentityProviderCreateApi),
         name="api-identity-providers"),
    path("identity-providers/<int:pk>",
         route_by_method(get=api.IdentityProviderGetApi, patch=api.IdentityProviderUpdateApi,
                         delete=api.IdentityProviderDeleteApi),
         name="api-identity-provider"),
    path("identity-providers/<int:pk>/domains/verify", api.IdentityProviderVerifyDomainsApi.as_view(),
         name="api-identity-provider-verify-domains"),
    path("identity-providers/<int:pk>/scim-token",
         route_by_method(get=api.ScimTokenGetApi, post=api.ScimTokenIssueApi, delete=api.ScimTokenRevokeApi),
         name="api-identity-provider-scim-token"),
]
