"""SCIM 2.0 at /scim/v2/ (RFC 7644): an identity provider's directory provisions, changes and removes the tenant's
members and maps its groups to roles. ScimView resolves the tenant from the SCIM token once and scopes every read
to it (core.api.ScopedView's rule); every error is a SCIM error message in application/scim+json."""
from django.db import InterfaceError, OperationalError
from django.http import Http404, JsonResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt
from rest_framework import exceptions, status
from rest_framework.authentication import BaseAuthentication, get_authorization_header
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import JSONParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from core.api import ScopedView
from sso import scim, selectors
from sso import scim_protocol as protocol
from sso.models import ScimToken
from sso.scim_protocol import ScimError
from tenants import policy
from tenants.exceptions import ServiceError

AUTHENTICATE = 'Bearer realm="scim"'


class ScimJsonParser(JSONParser):
    media_type = protocol.CONTENT_TYPE


class ScimJsonRenderer(JSONRenderer):
    media_type = protocol.CONTENT_TYPE


class ScimNegotiation(DefaultContentNegotiation):
    """Always application/scim+json (RFC 7644 3.1), whatever the client's Accept says."""

    def select_renderer(self, request, renderers, format_suffix=None):
        return renderers[0], renderers[0].media_type


class ScimTokenAuthentication(BaseAuthentication):
    """`Authorization: Bearer hsc_…`: an identity provider's SCIM token; it acts for that provider's tenant."""

    def authenticate(self, request):
        parts = get_authorization_header(request).split()
        if not parts or parts[0].lower() != b"bearer":
            return None
        if len(parts) != 2:
            raise exceptions.AuthenticationFailed("Send the token as 'Authorization: Bearer <SCIM token>'.")
        token = scim.scim_token_authenticate(parts[1].decode(errors="replace"))
        if token is None:
            raise exceptions.AuthenticationFailed("Invalid or revoked SCIM token.")
        return None, token

    def authenticate_header(self, request):
        return AUTHENTICATE


class ScimView(ScopedView):
    authentication_classes = [ScimTokenAuthentication]
    permission_classes = []
    parser_classes = [ScimJsonParser, JSONParser]
    renderer_classes = [ScimJsonRenderer]
    content_negotiation_class = ScimNegotiation
    schema = None  # not part of the REST API's OpenAPI document: SCIM publishes its own (Schemas, ResourceTypes)

    @property
    def identity_provider(self):
        return self.request.auth.identity_provider

    @property
    def tenant(self):
        return self.request.auth.identity_provider.tenant

    @property
    def base_url(self):
        return self.request.build_absolute_uri(reverse("scim:users")).removesuffix("/Users")

    def check_permissions(self, request):
        if not isinstance(request.auth, ScimToken):
            raise exceptions.NotAuthenticated("This endpoint needs a SCIM token: 'Authorization: Bearer hsc_…'.")
        policy.require_not_offboarded(self.tenant)
        policy.sso_check(self.tenant)  # a plan without single sign-on has no SCIM either

    def handle_exception(self, exc):
        if isinstance(exc, ScimError):
            return self.error(exc.status, exc.detail, exc.scim_type)
        if isinstance(exc, ServiceError):
            scim_type = exc.code if exc.code in protocol.SCIM_TYPES else None
            return self.error(exc.status_code, exc.message, scim_type)
        if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
            response = self.error(401, str(exc.detail))
            response["WWW-Authenticate"] = AUTHENTICATE
            return response
        if isinstance(exc, exceptions.ParseError):
            return self.error(400, f"The body is not valid JSON: {exc.detail}", "invalidSyntax")
        if isinstance(exc, Http404):
            return self.error(404, "Not found.")
        if isinstance(exc, exceptions.APIException):
            return self.error(exc.status_code, str(exc.detail))
        if isinstance(exc, (OperationalError, InterfaceError)):
            response = self.error(503, "The database did not answer; try again shortly.")
            response["Retry-After"] = "1"
            return response
        return super().handle_exception(exc)

    def error(self, status_code, detail, scim_type=None):
        return Response(protocol.error_body(status_code, detail, scim_type), status=status_code)

    def page(self, queryset, resource, represent):
        start, count = protocol.paging(self.request.query_params)
        lookup = protocol.filter_lookup(self.request.query_params.get("filter"), resource)
        if lookup is not None:
            if "pk" in lookup and not selectors.is_uuid(lookup["pk"]):
                queryset = queryset.none()
            else:
                queryset = queryset.filter(**lookup)
        total = queryset.count()
        rows = list(queryset[start - 1:start - 1 + count]) if count else []
        return Response(protocol.list_body([represent(row) for row in rows], total=total, start_index=start))


# --- discovery (RFC 7644 section 4) ----------------------------------------------------------------------------------

def _service_provider_config():
    return {
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "documentationUri": "https://github.com/hearth/hearth/blob/main/docs/SSO.md",
        "patch": {"supported": True},
        "bulk": {"supported": False, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": True, "maxResults": protocol.MAX_COUNT},
        "changePassword": {"supported": False},
        "sort": {"supported": False},
        "etag": {"supported": False},
        "authenticationSchemes": [{"type": "oauthbearertoken", "name": "SCIM token", "primary": True,
                                   "description": "The identity provider's SCIM token (hsc_…), made by the "
                                                  "tenant's owners: Authorization: Bearer <token>."}],
        "meta": {"resourceType": "ServiceProviderConfig"},
    }


def _attribute(name, type_="string", *, required=False, multi=False, mutability="readWrite", sub=None,
               uniqueness="none"):
    attribute = {"name": name, "type": type_, "multiValued": multi, "required": required, "caseExact": False,
                 "mutability": mutability, "returned": "default", "uniqueness": uniqueness}
    if sub:
        attribute["subAttributes"] = sub
    return attribute


SCHEMAS = {
    protocol.USER_SCHEMA: {"name": "User", "description": "A member of the tenant, by email address.",
                           "attributes": [
                               _attribute("userName", required=True, uniqueness="server", mutability="immutable"),
                               _attribute("externalId"),
                               _attribute("name", "complex", sub=[_attribute("givenName"),
                                                                  _attribute("familyName")]),
                               _attribute("active", "boolean"),
                               _attribute("groups", "complex", multi=True, mutability="readOnly",
                                          sub=[_attribute("value", mutability="readOnly"),
                                               _attribute("display", mutability="readOnly")])]},
    protocol.GROUP_SCHEMA: {"name": "Group", "description": "A directory group; its displayName maps to a role "
                                                            "through the identity provider's group_roles.",
                            "attributes": [
                                _attribute("displayName", required=True, uniqueness="server"),
                                _attribute("externalId"),
                                _attribute("members", "complex", multi=True,
                                           sub=[_attribute("value", mutability="immutable"),
                                                _attribute("display", mutability="readOnly")])]},
}
RESOURCE_TYPES = {"User": {"endpoint": "/Users", "schema": protocol.USER_SCHEMA},
                  "Group": {"endpoint": "/Groups", "schema": protocol.GROUP_SCHEMA}}


def _schema(urn, base_url):
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"], "id": urn, **SCHEMAS[urn],
            "meta": {"resourceType": "Schema", "location": f"{base_url}/Schemas/{urn}"}}


def _resource_type(name, base_url):
    return {"schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"], "id": name, "name": name,
            **RESOURCE_TYPES[name], "meta": {"resourceType": "ResourceType",
                                             "location": f"{base_url}/ResourceTypes/{name}"}}


class ServiceProviderConfigApi(ScimView):
    def get(self, request):
        return Response(_service_provider_config())


class ResourceTypesApi(ScimView):
    def get(self, request, name=None):
        if name is None:
            types = [_resource_type(n, self.base_url) for n in RESOURCE_TYPES]
            return Response(protocol.list_body(types, total=len(types), start_index=1))
        if name not in RESOURCE_TYPES:
            raise ScimError(404, f"No resource type {name}: User, Group.")
        return Response(_resource_type(name, self.base_url))


class SchemasApi(ScimView):
    def get(self, request, urn=None):
        if urn is None:
            schemas = [_schema(u, self.base_url) for u in SCHEMAS]
            return Response(protocol.list_body(schemas, total=len(schemas), start_index=1))
        if urn not in SCHEMAS:
            raise ScimError(404, f"No schema {urn}.")
        return Response(_schema(urn, self.base_url))


# --- Users -----------------------------------------------------------------------------------------------------------


class _UserView(ScimView):
    def scoped_queryset(self):
        return selectors.scim_user_list(tenant=self.tenant, identity_provider=self.identity_provider)

    def scim_user(self, pk):
        return selectors.scim_user_get(tenant=self.tenant, identity_provider=self.identity_provider,
                                       scim_user_id=pk)

    def represent(self, scim_user, status_code=200):
        fresh = self.scim_user(scim_user.pk)
        response = Response(protocol.user_resource(fresh, base_url=self.base_url), status=status_code)
        response["Location"] = f"{self.base_url}/Users/{fresh.pk}"
        return response


class UsersApi(_UserView):
    def get(self, request):
        return self.page(self.get_queryset(), "User",
                         lambda row: protocol.user_resource(row, base_url=self.base_url))

    def post(self, request):
        values = protocol.user_values(request.data)
        scim_user = scim.scim_user_create(identity_provider=self.identity_provider, **values)
        return self.represent(scim_user, status.HTTP_201_CREATED)


class UserApi(_UserView):
    def get(self, request, pk):
        return self.represent(self.scim_user(pk))

    def put(self, request, pk):
        scim_user = self.scim_user(pk)
        values = protocol.user_values(request.data)
        return self.represent(scim.scim_user_update(scim_user=scim_user, **values))

    def patch(self, request, pk):
        scim_user = self.scim_user(pk)
        values = protocol.user_patch(request.data)
        return self.represent(scim.scim_user_update(scim_user=scim_user, **values))

    def delete(self, request, pk):
        scim.scim_user_delete(scim_user=self.scim_user(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- Groups ----------------------------------------------------------------------------------------------------------


class _GroupView(ScimView):
    def scoped_queryset(self):
        return selectors.scim_group_list(tenant=self.tenant, identity_provider=self.identity_provider)

    def group(self, pk):
        return selectors.scim_group_get(tenant=self.tenant, identity_provider=self.identity_provider,
                                        scim_group_id=pk)

    def with_members(self):
        excluded = {a.strip().lower() for a in self.request.query_params.get("excludedAttributes", "").split(",")}
        return "members" not in excluded

    def represent(self, group, status_code=200):
        fresh = self.group(group.pk)
        response = Response(protocol.group_resource(fresh, base_url=self.base_url, members=self.with_members()),
                            status=status_code)
        response["Location"] = f"{self.base_url}/Groups/{fresh.pk}"
        return response


class GroupsApi(_GroupView):
    def get(self, request):
        members = self.with_members()
        return self.page(self.get_queryset(), "Group",
                         lambda row: protocol.group_resource(row, base_url=self.base_url, members=members))

    def post(self, request):
        values = protocol.group_values(request.data)
        group = scim.scim_group_create(identity_provider=self.identity_provider,
                                       display_name=values["display_name"],
                                       external_id=values.get("external_id", ""),
                                       member_ids=values.get("members", []))
        return self.represent(group, status.HTTP_201_CREATED)


class GroupApi(_GroupView):
    def get(self, request, pk):
        return self.represent(self.group(pk))

    def put(self, request, pk):
        group = self.group(pk)
        values = protocol.group_values(request.data)
        return self.represent(scim.scim_group_update(group=group, display_name=values["display_name"],
                                                     external_id=values.get("external_id"),
                                                     members=values.get("members", [])))

    def patch(self, request, pk):
        group = self.group(pk)
        return self.represent(scim.scim_group_update(group=group, **protocol.group_patch(request.data)))

    def delete(self, request, pk):
        scim.scim_group_delete(group=self.group(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


@csrf_exempt  # token-authenticated, like the views
def scim_not_found(request, *args, **kwargs):
    """Unknown paths under /scim/v2/ answer a SCIM error, not an HTML page."""
    return JsonResponse(protocol.error_body(404, f"No SCIM endpoint at {request.path}."), status=404,
                        content_type=protocol.CONTENT_TYPE)
