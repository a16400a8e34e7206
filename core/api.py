"""The API's base view: the one place that resolves the tenant from the credentials and scopes every queryset
(STYLE habit 4), and decides who may write through tenants.policy.

Subclasses of TenantScopedView get `self.tenant` and `self.membership` from the token and implement
`scoped_queryset()`; overriding `get_queryset` is refused at class creation, so no view can forget the
tenant filter. The escape hatch is named `dangerously_get_queryset` and must be justified where used.
"""
from drf_spectacular.utils import OpenApiResponse, inline_serializer
from rest_framework import exceptions, serializers
from rest_framework.generics import GenericAPIView
from rest_framework.permissions import BasePermission, IsAuthenticated

from core.context import context_set
from tenants import policy


class IsTenantMember(BasePermission):
    """The credentials carry a membership, and the tenant is not offboarded."""

    message = "This endpoint needs a tenant member's API token."

    def has_permission(self, request, view):
        membership = getattr(request.auth, "membership", None)
        return membership is not None and not policy.is_offboarded(membership.tenant)


class IsTenantManager(BasePermission):
    message = policy.MANAGERS_ONLY

    def has_permission(self, request, view):
        return policy.can_manage_members(request.auth.membership)


class IsTenantOwner(BasePermission):
    """For reads as well as writes (e.g. the tenant's identity providers)."""

    message = policy.OWNERS_ONLY

    def has_permission(self, request, view):
        return policy.is_owner(request.auth.membership)


class ScopedView(GenericAPIView):
    """The one scoping rule for every credential-resolved view: a subclass names its tenant (from the credentials,
    once) and supplies `scoped_queryset()`; overriding `get_queryset` is refused at class creation. The API's
    TenantScopedView (personal tokens) and SCIM's ScimView (an identity provider's directory token) are its two
    kinds."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "get_queryset" in cls.__dict__:
            raise TypeError(
                f"{cls.__name__} overrides get_queryset; implement scoped_queryset() instead "
                "(or dangerously_get_queryset with a comment saying why)"
            )

    @property
    def tenant(self):
        raise NotImplementedError

    def scoped_queryset(self):
        raise NotImplementedError

    def dangerously_get_queryset(self):
        raise NotImplementedError

    def get_queryset(self):
        try:
            return self.dangerously_get_queryset()
        except NotImplementedError:
            pass
        return self.scoped_queryset()


class TenantScopedView(ScopedView):
    permission_classes = [IsAuthenticated, IsTenantMember]
    # Roles allowed to write (POST/PATCH/PUT/DELETE), named by tenants.policy; None: every member (the service
    # checks the rest).
    write_roles = policy.MANAGER_ROLES
    write_denied_message = policy.MANAGERS_ONLY

    @property
    def membership(self):
        return self.request.auth.membership

    @property
    def tenant(self):
        return self.request.auth.membership.tenant

    def check_permissions(self, request):
        membership = getattr(request.auth, "membership", None)
        if membership is not None:  # the request's tenant and user, for its spans and log lines (core.context)
            context_set(tenant_id=membership.tenant_id, user_id=membership.user_id)
        super().check_permissions(request)
        if (
            request.method not in ("GET", "HEAD", "OPTIONS")
            and self.write_roles is not None
            and not policy.has_role(self.membership, self.write_roles)
        ):
            self.permission_denied(request, message=self.write_denied_message)


def shared_representation(serializer_class):
    """`serializer_class(instance).data` for the hot read paths, without building the serializer's fields on every
    call: one instance per process, shared by its threads (to_representation keeps no per-call state). A
    ModelSerializer builds its fields from the model for every instance: 0.3–0.5 ms of a response. The instance has
    no context, so not for a serializer that reads the request."""
    return serializer_class().to_representation


class StrictInputSerializer(serializers.Serializer):
    """An input serializer that rejects fields it does not know instead of silently dropping them.

    `refused_fields` maps a field name to the message that says why (and where to change it instead).
    """

    refused_fields = {}

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            unknown = [key for key in data.keys() if key not in self.fields]
            if unknown:
                raise exceptions.ValidationError({
                    key: [self.refused_fields.get(key, f"'{key}' is not a field of this request; "
                                                       f"accepted: {', '.join(self.fields) or 'none'}.")]
                    for key in unknown
                })
        return super().to_internal_value(data)


# The one error shape of every endpoint (core.errors writes it), for the OpenAPI schema.
ErrorSerializer = inline_serializer("Error", fields={
    "code": serializers.CharField(), "detail": serializers.CharField(), "field": serializers.CharField(required=False)})


def error_responses(described, *codes):
    """The schema's error answers: 401 (every endpoint needs a token) and `codes`, each with its app's description."""
    return {code: OpenApiResponse(ErrorSerializer, description=described[code]) for code in (401, *codes)}


def validated(serializer_class, data):
    """The input's validated data; a 400 with the fields' messages otherwise."""
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
