"""REST API v1 of the tenants app: the caller's tenant, plans, members, invitations and personal API tokens.

Every view acts in the tenant of the API token it is called with (`TenantScopedView`); ids of another
tenant's rows answer 404 exactly like ids that do not exist. Invitation tokens never appear in responses:
the link goes only to the invitee's mailbox, so an admin's API token cannot be used to join as someone else.
"""
from django.conf import settings
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.response import Response

from core.api import (
    IsTenantMember,
    StrictInputSerializer,
    TenantScopedView,
    error_responses,
    shared_representation,
    validated,
)
from core.pagination import PAGE_PARAMETERS, paged_response
from tenants import policy, selectors, services
from tenants.exceptions import NotFound
from tenants.models import ApiToken, AuditLog, Invitation, Membership, Plan, Role
from tenants.models import Tenant as TenantModel

_DESCRIBED = {
        400: "Invalid input (malformed JSON, unknown or refused field, unknown plan).",
        401: "Missing, invalid or revoked API token.",
        403: "The member's role does not allow this.",
        404: "No such object in the caller's tenant.",
        409: "Conflicts with the current state (seat limit, last owner, duplicate invitation).",
}


def _errors(*codes):
    return error_responses(_DESCRIBED, *codes)


# --- plans -------------------------------------------------------------------------------------------


class PlanOutputSerializer(serializers.ModelSerializer):
    """A plan and its allowances; `null` means unlimited (or, for the price, custom pricing)."""

    class Meta:
        model = Plan
        fields = [
            "slug", "name", "monthly_price_cents", "currency", "daily_minutes", "monthly_hours", "storage_mb",
            "seats", "max_concurrent_workspaces", "idle_timeout_minutes", "max_session_hours",
            "overage_price_cents_per_hour",
        ]
        read_only_fields = fields


class PlanListApi(TenantScopedView):
    """The plans a tenant can choose."""

    OutputSerializer = PlanOutputSerializer

    def scoped_queryset(self):
        # Plans are global, not tenant data; only the public ones are listed.
        return selectors.plan_list(public_only=True)

    @extend_schema(responses={200: PlanOutputSerializer(many=True), **_errors()}, tags=["plans"])
    def get(self, request):
        return Response([_plan_representation(plan) for plan in self.get_queryset()])


# --- the tenant ----------------------------------------------------------------------------------


class TenantOutputSerializer(serializers.ModelSerializer):
    plan = PlanOutputSerializer()

    class Meta:
        model = TenantModel
        fields = ["slug", "name", "status", "plan", "created_at"]
        read_only_fields = fields


_plan_representation = shared_representation(PlanOutputSerializer)
_tenant_representation = shared_representation(TenantOutputSerializer)


class TenantGetApi(TenantScopedView):
    """The tenant the API token acts in."""

    OutputSerializer = TenantOutputSerializer

    def scoped_queryset(self):
        return TenantModel.objects.filter(pk=self.tenant.pk).select_related("plan")

    @extend_schema(responses={200: TenantOutputSerializer, **_errors()}, tags=["tenant"])
    def get(self, request):
        # The token's lookup loaded this tenant and its plan in this request (tenants.tokens): no second query.
        return Response(_tenant_representation(self.tenant))


class TenantUpdateApi(TenantScopedView):
    """Rename the tenant (owners and admins). Plan, status and slug are not changed here."""

    class InputSerializer(StrictInputSerializer):
        name = serializers.CharField(max_length=120)

        refused_fields = {
            "plan": "The plan is changed with POST /api/v1/tenant/plan (owners only).",
            "status": "The status is changed by Hearth's staff (suspension) or by offboarding, not here.",
            "slug": "The slug is permanent: URLs and storage are named after it.",
            "tenant": "A token acts in its own tenant; the tenant cannot be chosen in the body.",
        }

    OutputSerializer = TenantOutputSerializer

    def scoped_queryset(self):
        return TenantModel.objects.filter(pk=self.tenant.pk).select_related("plan")

    @extend_schema(request=InputSerializer, responses={200: TenantOutputSerializer, **_errors(400, 403)},
                   tags=["tenant"])
    def patch(self, request):
        data = validated(self.InputSerializer, request.data)
        services.tenant_rename(tenant=self.tenant, name=data["name"], actor=request.user)
        return Response(_tenant_representation(self.get_queryset().get()))


class TenantChangePlanApi(TenantScopedView):
    """Choose another public plan (owners only). A paid plan starts only when it is paid: without a paid
    subscription the answer is 202 with a Stripe Checkout URL and the tenant keeps its plan until Stripe reports
    the subscription active. With one, an upgrade is prorated now and a downgrade (or Free) waits for the period's
    end (`pending_plan`); a downgrade the tenant no longer fits is 409."""

    write_roles = None  # owners only: the service asks tenants.policy

    class InputSerializer(StrictInputSerializer):
        plan = serializers.SlugField(help_text="The slug of a public plan, as listed by GET /api/v1/plans.")

    class CheckoutSerializer(serializers.Serializer):
        checkout_url = serializers.URLField(help_text="Stripe Checkout: pay there to start the plan.")
        plan = serializers.SlugField(help_text="The tenant's plan now (unchanged until the payment).")

    class OutputSerializer(TenantOutputSerializer):
        pending_plan = serializers.SlugField(source="pending_plan.slug", default=None, allow_null=True,
                                             help_text="The plan from the end of the current period, if any.")
        outcome = serializers.ChoiceField(choices=["changed", "scheduled", "unchanged"])

        class Meta(TenantOutputSerializer.Meta):
            fields = [*TenantOutputSerializer.Meta.fields, "pending_plan", "outcome"]
            read_only_fields = fields

    def scoped_queryset(self):
        return TenantModel.objects.filter(pk=self.tenant.pk).select_related("plan", "pending_plan")

    @extend_schema(request=InputSerializer, responses={200: OutputSerializer, 202: CheckoutSerializer,
                                                       **_errors(400, 403, 409)}, tags=["tenant"])
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        result = services.tenant_request_plan(tenant=self.tenant, plan=data["plan"], actor=request.user,
                                              return_url=f"{settings.HEARTH_BASE_URL.rstrip('/')}/billing/")
        if result.checkout_url:
            return Response({"checkout_url": result.checkout_url, "plan": result.tenant.plan.slug},
                            status=status.HTTP_202_ACCEPTED)
        tenant = self.get_queryset().get()
        tenant.outcome = result.outcome
        return Response(self.OutputSerializer(tenant).data)


# --- members -------------------------------------------------------------------------------------


class MemberOutputSerializer(serializers.ModelSerializer):
    email = serializers.EmailField(source="user.email")
    joined_at = serializers.DateTimeField(source="created_at")

    class Meta:
        model = Membership
        fields = ["id", "email", "role", "joined_at"]
        read_only_fields = fields


class MemberListApi(TenantScopedView):
    OutputSerializer = MemberOutputSerializer

    def scoped_queryset(self):
        return selectors.member_list(tenant=self.tenant)

    @extend_schema(parameters=PAGE_PARAMETERS, responses={200: MemberOutputSerializer(many=True), **_errors(400)},
                   tags=["members"])
    def get(self, request):
        return paged_response(request, self.get_queryset(), self.OutputSerializer, order=("pk",))


class MemberGetApi(TenantScopedView):
    OutputSerializer = MemberOutputSerializer

    def scoped_queryset(self):
        return selectors.member_list(tenant=self.tenant)

    @extend_schema(responses={200: MemberOutputSerializer, **_errors(404)}, tags=["members"])
    def get(self, request, pk):
        return Response(self.OutputSerializer(selectors.member_get(tenant=self.tenant, membership_id=pk)).data)


class MemberSetRoleApi(TenantScopedView):
    """Change a member's role (owners and admins; only owners make or unmake owners)."""

    class InputSerializer(StrictInputSerializer):
        role = serializers.ChoiceField(choices=Role.choices)

    OutputSerializer = MemberOutputSerializer

    def scoped_queryset(self):
        return selectors.member_list(tenant=self.tenant)

    @extend_schema(request=InputSerializer, responses={200: MemberOutputSerializer, **_errors(400, 403, 404, 409)},
                   tags=["members"])
    def patch(self, request, pk):
        membership = selectors.member_get(tenant=self.tenant, membership_id=pk)
        data = validated(self.InputSerializer, request.data)
        membership = services.member_set_role(membership=membership, role=data["role"], actor=request.user)
        return Response(self.OutputSerializer(membership).data)


class MemberRemoveApi(TenantScopedView):
    """Remove a member (owners and admins), or leave the tenant (any member, their own id)."""

    write_roles = None  # leaving is open to every member; the service checks removing others

    def scoped_queryset(self):
        return selectors.member_list(tenant=self.tenant)

    @extend_schema(responses={204: None, **_errors(403, 404, 409)}, tags=["members"])
    def delete(self, request, pk):
        membership = selectors.member_get(tenant=self.tenant, membership_id=pk)
        services.member_remove(membership=membership, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- invitations ---------------------------------------------------------------------------------


class InvitationOutputSerializer(serializers.ModelSerializer):
    invited_by = serializers.EmailField(source="invited_by.email", default=None, allow_null=True)
    state = serializers.SerializerMethodField()

    class Meta:
        model = Invitation
        fields = ["id", "email", "role", "state", "invited_by", "created_at", "expires_at"]
        read_only_fields = fields

    def get_state(self, invitation) -> str:
        from django.utils import timezone

        if invitation.accepted_at:
            return "accepted"
        if invitation.revoked_at:
            return "revoked"
        return "expired" if invitation.expires_at <= timezone.now() else "pending"


class MemberInviteApi(TenantScopedView):
    """Invite an address (owners and admins). The invitation link is mailed to it, never returned here."""

    class InputSerializer(StrictInputSerializer):
        email = serializers.EmailField(max_length=254)
        role = serializers.ChoiceField(choices=Role.choices, default=Role.MEMBER)

    class OutputSerializer(InvitationOutputSerializer):
        mail_sent = serializers.BooleanField(help_text="False if the mail server refused; revoke and invite again.")

        class Meta(InvitationOutputSerializer.Meta):
            fields = [*InvitationOutputSerializer.Meta.fields, "mail_sent"]
            read_only_fields = fields

    def scoped_queryset(self):
        return selectors.invitation_list(tenant=self.tenant)

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **_errors(400, 403, 409)},
                   tags=["members"])
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        invitation, token = services.member_invite(tenant=self.tenant, email=data["email"], role=data["role"],
                                                   actor=request.user)
        invitation.mail_sent = services.invitation_send_mail(invitation=invitation, token=token)
        return Response(self.OutputSerializer(invitation).data, status=status.HTTP_201_CREATED)


class InvitationListApi(TenantScopedView):
    """Pending invitations (owners and admins: they show addresses that are not members yet)."""

    OutputSerializer = InvitationOutputSerializer

    def scoped_queryset(self):
        return selectors.invitation_list(tenant=self.tenant).select_related("invited_by")

    def check_permissions(self, request):
        super().check_permissions(request)
        if not policy.can_manage_members(self.membership):
            self.permission_denied(request, message="Only the tenant's owners and admins can see invitations.")

    @extend_schema(parameters=PAGE_PARAMETERS, responses={200: InvitationOutputSerializer(many=True),
                                                          **_errors(400, 403)}, tags=["invitations"])
    def get(self, request):
        return paged_response(request, self.get_queryset(), self.OutputSerializer)


class InvitationRevokeApi(TenantScopedView):
    def scoped_queryset(self):
        return selectors.invitation_list(tenant=self.tenant, pending_only=False)

    @extend_schema(responses={204: None, **_errors(403, 404, 409)}, tags=["invitations"])
    def delete(self, request, pk):
        invitation = selectors.invitation_get(tenant=self.tenant, invitation_id=pk)
        services.invitation_revoke(invitation=invitation, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class InvitationAcceptApi(TenantScopedView):
    """Accept an invitation for the token's user (the address must match); answers the new membership.

    The new membership is in the inviting tenant; the calling token stays bound to its own tenant, so
    create a token in the new tenant (portal, or `create_api_token`) to act there.
    """

    write_roles = None  # any member may join another tenant they were invited to

    class InputSerializer(StrictInputSerializer):
        token = serializers.CharField(max_length=200, help_text="The token from the invitation link.")

    class OutputSerializer(MemberOutputSerializer):
        tenant = serializers.SlugField(source="tenant.slug")

        class Meta(MemberOutputSerializer.Meta):
            fields = [*MemberOutputSerializer.Meta.fields, "tenant"]
            read_only_fields = fields

    def scoped_queryset(self):
        return Invitation.objects.none()  # found by its secret token, not by id

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **_errors(400, 403, 404, 409)},
                   tags=["invitations"])
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        membership = services.invitation_accept(token=data["token"], user=request.user)
        return Response(self.OutputSerializer(membership).data, status=status.HTTP_201_CREATED)


# --- personal API tokens -------------------------------------------------------------------------


class TokenOutputSerializer(serializers.ModelSerializer):
    class Meta:
        model = ApiToken
        fields = ["id", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
        read_only_fields = fields


class TokenListApi(TenantScopedView):
    """The caller's own tokens in this tenant (revoked ones included, marked)."""

    OutputSerializer = TokenOutputSerializer

    def scoped_queryset(self):
        return ApiToken.objects.filter(membership=self.membership)

    @extend_schema(parameters=PAGE_PARAMETERS, responses={200: TokenOutputSerializer(many=True), **_errors(400)},
                   tags=["tokens"])
    def get(self, request):
        return paged_response(request, self.get_queryset(), self.OutputSerializer)


class TokenCreateApi(TenantScopedView):
    """Create a personal token for the caller's membership; the plaintext is in this response only."""

    write_roles = None

    class InputSerializer(StrictInputSerializer):
        name = serializers.CharField(max_length=80, required=False, default="API token")

    class OutputSerializer(TokenOutputSerializer):
        token = serializers.CharField(source="plaintext", help_text="Shown once; only its hash is stored.")

        class Meta(TokenOutputSerializer.Meta):
            fields = [*TokenOutputSerializer.Meta.fields, "token"]
            read_only_fields = fields

    def scoped_queryset(self):
        return ApiToken.objects.filter(membership=self.membership)

    @extend_schema(request=InputSerializer, responses={201: OutputSerializer, **_errors(400)}, tags=["tokens"])
    def post(self, request):
        data = validated(self.InputSerializer, request.data)
        # A token made with a token made after an SSO sign-in counts as made after that sign-in.
        token, plaintext = services.api_token_create(membership=self.membership, name=data["name"], actor=request.user,
                                                     sso_login_at=request.auth.sso_login_at)
        token.plaintext = plaintext
        return Response(self.OutputSerializer(token).data, status=status.HTTP_201_CREATED)


class TokenRevokeApi(TenantScopedView):
    write_roles = None

    def scoped_queryset(self):
        return ApiToken.objects.filter(membership=self.membership)

    @extend_schema(responses={204: None, **_errors(404)}, tags=["tokens"])
    def delete(self, request, pk):
        token = self.get_queryset().filter(pk=pk).first()
        if token is None:
            raise NotFound("No such API token.")
        services.api_token_revoke(token=token, actor=request.user)
        return Response(status=status.HTTP_204_NO_CONTENT)


class CanSeeActivity(BasePermission):
    message = policy.MANAGERS_ONLY

    def has_permission(self, request, view):
        return policy.can_see_activity(request.auth.membership)


class AuditLogOutputSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor_label")

    class Meta:
        model = AuditLog
        fields = ["id", "created_at", "actor", "action", "target", "data"]
        read_only_fields = fields


class AuditLogListApi(TenantScopedView):
    """The tenant's audit trail, newest first (owners and admins), as the portal's Audit trail page shows it."""

    permission_classes = [IsAuthenticated, IsTenantMember, CanSeeActivity]
    OutputSerializer = AuditLogOutputSerializer

    def scoped_queryset(self):
        return selectors.audit_log_list(tenant=self.tenant)

    @extend_schema(parameters=[OpenApiParameter("action", str, description="Only rows of this action, e.g. "
                                                                          "member.joined."), *PAGE_PARAMETERS],
                   responses={200: AuditLogOutputSerializer(many=True), **_errors(400, 403)}, tags=["audit"])
    def get(self, request):
        rows = self.get_queryset()
        if action := request.query_params.get("action"):
            rows = rows.filter(action=action)
        return paged_response(request, rows, self.OutputSerializer, order=("-created_at", "-pk"))
