"""REST API v1 of the sso app: the tenant's identity providers and their SCIM tokens, for its owners only (reads
too: they show how the tenant signs in). The client secret is accepted, stored encrypted and never returned; a SCIM
token is shown once, when it is made."""
from django.urls import reverse
from drf_spectacular.utils import extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import IsAuthenticated
from rest_framework.response import Response

from core.api import IsTenantMember, IsTenantOwner, StrictInputSerializer, TenantScopedView, error_responses, validated
from sso import saml_config, scim, selectors, services
from sso.models import IdentityProvider
from tenants import policy

_DESCRIBED = {
        400: "Invalid input (unknown field, bad URL or domain, a role an IdP cannot give, missing client secret).",
        401: "Missing, invalid or revoked API token.",
        403: "Not an owner, or the plan does not include single sign-on.",
        404: "No such identity provider in the caller's tenant (or no live SCIM token).",
        409: "A domain is already verified by another tenant.",
        503: "The DNS lookup failed.",
}


def _errors(*codes):
    return error_responses(_DESCRIBED, *codes)


class DomainOutputSerializer(serializers.Serializer):
    domain = serializers.CharField()
    verified = serializers.SerializerMethodField()
    verified_at = serializers.DateTimeField(allow_null=True)
    txt_record = serializers.CharField(help_text="Publish this TXT record at the domain, then verify.")

    def get_verified(self, row) -> bool:
        return row.verified_at is not None


class IdentityProviderOutputSerializer(serializers.ModelSerializer):
    domains = serializers.SerializerMethodField(help_text="Every listed domain; only verified ones route sign-ins.")
    domain_verification = DomainOutputSerializer(source="domains", many=True, read_only=True)
    client_secret_set = serializers.SerializerMethodField(help_text="The secret itself is never returned.")
    sp_metadata_url = serializers.SerializerMethodField(
        help_text="SAML: Hearth's SP metadata for this IdP; its URL is also Hearth's entity id (null for OIDC).")
    sp_acs_url = serializers.SerializerMethodField(help_text="SAML: the ACS URL the IdP posts to (null for OIDC).")

    class Meta:
        model = IdentityProvider
        fields = ["id", "kind", "issuer", "client_id", "client_secret_set", "scopes", "claim_mapping",
                  "metadata_url", "metadata_xml", "entity_id", "attribute_mapping", "sp_metadata_url", "sp_acs_url",
                  "domains", "domain_verification",
                  "default_role", "group_roles", "enforce_sso", "created_at", "updated_at"]
        read_only_fields = fields

    def get_domains(self, provider) -> list[str]:
        return [row.domain for row in provider.domains.all()]

    def get_client_secret_set(self, provider) -> bool:
        return bool(provider.client_secret_encrypted)

    def get_sp_metadata_url(self, provider) -> str | None:
        return saml_config.sp_entity_id(provider) if provider.kind == IdentityProvider.Kind.SAML else None

    def get_sp_acs_url(self, provider) -> str | None:
        return saml_config.sp_acs_url(provider) if provider.kind == IdentityProvider.Kind.SAML else None


class IdentityProviderInputSerializer(StrictInputSerializer):
    kind = serializers.ChoiceField(choices=IdentityProvider.Kind.values, required=False)
    issuer = serializers.CharField(required=False, allow_blank=True, max_length=500)
    client_id = serializers.CharField(required=False, allow_blank=True, max_length=255)
    client_secret = serializers.CharField(required=False, write_only=True, max_length=1000)
    scopes = serializers.CharField(required=False, max_length=300, help_text="Space-separated; must include openid.")
    claim_mapping = serializers.DictField(child=serializers.CharField(), required=False)
    metadata_url = serializers.CharField(required=False, allow_blank=True, max_length=500)
    metadata_xml = serializers.CharField(required=False, allow_blank=True, max_length=200_000)
    entity_id = serializers.CharField(required=False, allow_blank=True, max_length=500)
    attribute_mapping = serializers.DictField(child=serializers.CharField(), required=False)
    domains = serializers.ListField(child=serializers.CharField(max_length=253), required=False)
    default_role = serializers.CharField(required=False)
    group_roles = serializers.DictField(child=serializers.CharField(), required=False)
    enforce_sso = serializers.BooleanField(required=False)

    refused_fields = {"id": "The id is chosen by Hearth.", "tenant": "A token acts in its own tenant."}


class _OwnersView(TenantScopedView):
    permission_classes = [IsAuthenticated, IsTenantMember, IsTenantOwner]
    write_roles = policy.OWNER_ROLES
    write_denied_message = policy.OWNERS_ONLY

    def scoped_queryset(self):
        return selectors.identity_provider_list(tenant=self.tenant)

    def provider(self, pk):
        return selectors.identity_provider_get(tenant=self.tenant, identity_provider_id=pk)

    def represent(self, provider):
        return IdentityProviderOutputSerializer(selectors.identity_provider_get(
            tenant=self.tenant, identity_provider_id=provider.pk)).data


class IdentityProviderListApi(_OwnersView):
    @extend_schema(responses={200: IdentityProviderOutputSerializer(many=True), **_errors(403)}, tags=["sso"])
    def get(self, request):
        return Response(IdentityProviderOutputSerializer(self.get_queryset(), many=True).data)


class IdentityProviderCreateApi(_OwnersView):
    @extend_schema(request=IdentityProviderInputSerializer,
                   responses={201: IdentityProviderOutputSerializer, **_errors(400, 403, 409)}, tags=["sso"])
    def post(self, request):
        data = validated(IdentityProviderInputSerializer, request.data)
        provider = services.identity_provider_create(tenant=self.tenant, actor=request.user, **data)
        return Response(self.represent(provider), status=status.HTTP_201_CREATED)


class IdentityProviderGetApi(_OwnersView):
    @extend_schema(responses={200: IdentityProviderOutputSerializer, **_errors(403, 404)}, tags=["sso"])
    def get(self, request, pk):
        return Response(IdentityProviderOutputSerializer(self.provider(pk)).data)


class IdentityProviderUpdateApi(_OwnersView):
    @extend_schema(request=IdentityProviderInputSerializer,
                   responses={200: IdentityProviderOutputSerializer, **_errors(400, 403, 404, 409)}, tags=["sso"])
    def patch(self, request, pk):
        provider = self.provider(pk)
        data = validated(IdentityProviderInputSerializer, request.data)
        provider = services.identity_provider_update(identity_provider=provider, actor=request.user, **data)
        return Response(self.represent(provider))


class IdentityProviderDeleteApi(_OwnersView):
    @extend_schema(responses={204: None, **_errors(403, 404)}, tags=["sso"])
    def delete(self, request, pk):
        services.identity_provider_delete(identity_provider=self.provider(pk), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class IdentityProviderVerifyDomainsApi(_OwnersView):
    """Look up each unverified domain's TXT record (`hearth-verification=<token>`) now."""

    @extend_schema(request=None, responses={200: IdentityProviderOutputSerializer, **_errors(403, 404, 409, 503)},
                   tags=["sso"])
    def post(self, request, pk):
        provider = self.provider(pk)
        services.domains_verify_dns(identity_provider=provider, actor=request.user)
        return Response(self.represent(provider))


# --- the SCIM token --------------------------------------------------------------------------------------------------


class ScimTokenOutputSerializer(serializers.Serializer):
    prefix = serializers.CharField(help_text="Tells tokens apart; the token is hsc_<prefix>_….")
    created_at = serializers.DateTimeField()
    last_used_at = serializers.DateTimeField(allow_null=True)
    scim_base_url = serializers.SerializerMethodField(help_text="Where the directory sends its SCIM requests.")

    def get_scim_base_url(self, token) -> str:
        return self.context["scim_base_url"]


class ScimTokenCreatedSerializer(ScimTokenOutputSerializer):
    token = serializers.CharField(help_text="The SCIM token: shown this once, stored only as a hash.")
    rotated = serializers.BooleanField(help_text="A previous token was revoked by this one.")


class _ScimTokenView(_OwnersView):
    def context(self):
        return {"scim_base_url": self.request.build_absolute_uri(reverse("scim:users")).removesuffix("/Users")}


class ScimTokenGetApi(_ScimTokenView):
    """The identity provider's live SCIM token (without the secret)."""

    @extend_schema(responses={200: ScimTokenOutputSerializer, **_errors(403, 404)}, tags=["sso"])
    def get(self, request, pk):
        token = selectors.scim_token_live(tenant=self.tenant, identity_provider=self.provider(pk))
        return Response(ScimTokenOutputSerializer(token, context=self.context()).data)


class ScimTokenIssueApi(_ScimTokenView):
    """Make the identity provider's SCIM token, or rotate it (the live one is revoked at once)."""

    @extend_schema(request=None, responses={201: ScimTokenCreatedSerializer, **_errors(403, 404)}, tags=["sso"])
    def post(self, request, pk):
        token, plaintext, old = scim.scim_token_issue(identity_provider=self.provider(pk), actor=request.user)
        token.token, token.rotated = plaintext, old is not None
        return Response(ScimTokenCreatedSerializer(token, context=self.context()).data,
                        status=status.HTTP_201_CREATED)


class ScimTokenRevokeApi(_ScimTokenView):
    @extend_schema(responses={204: None, **_errors(403, 404)}, tags=["sso"])
    def delete(self, request, pk):
        scim.scim_token_revoke(identity_provider=self.provider(pk), actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)
