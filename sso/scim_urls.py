"""SCIM 2.0 routes (mounted at /scim/v2/ by config.urls); a trailing slash is accepted, as directories differ."""
from django.urls import re_path

from sso import scim_api

app_name = "scim"
urlpatterns = [
    re_path(r"^ServiceProviderConfig/?$", scim_api.ServiceProviderConfigApi.as_view(),
            name="service-provider-config"),
    re_path(r"^ResourceTypes/?$", scim_api.ResourceTypesApi.as_view(), name="resource-types"),
    re_path(r"^ResourceTypes/(?P<name>[^/]+)/?$", scim_api.ResourceTypesApi.as_view(), name="resource-type"),
    re_path(r"^Schemas/?$", scim_api.SchemasApi.as_view(), name="schemas"),
    re_path(r"^Schemas/(?P<urn>[^/]+)/?$", scim_api.SchemasApi.as_view(), name="schema"),
    re_path(r"^Users/?$", scim_api.UsersApi.as_view(), name="users"),
    re_path(r"^Users/(?P<pk>[^/]+)/?$", scim_api.UserApi.as_view(), name="user"),
    re_path(r"^Groups/?$", scim_api.GroupsApi.as_view(), name="groups"),
    re_path(r"^Groups/(?P<pk>[^/]+)/?$", scim_api.GroupApi.as_view(), name="group"),
    re_path(r"", scim_api.scim_not_found),  # after every SCIM route
]
