"""REST API v1 of billing: the tenant's plan, subscription status, period and next invoice amount.

Amounts are the owners' (tenants.policy.can_see_billing): for other members `upcoming_amount_cents` is null, the rest
is shown, as the portal shows every member the plan and its status.
"""
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing.subscriptions import billing_overview
from core.api import TenantScopedView
from tenants import policy
from tenants.api import _errors
from tenants.models import Tenant


class BillingGetApi(TenantScopedView):
    """The caller's tenant's billing state."""

    class OutputSerializer(serializers.Serializer):
        plan = serializers.SlugField()
        status = serializers.CharField(help_text="Stripe's subscription status (active, past_due, canceled, …), "
                                                 "or none without a paid subscription.")
        period_end = serializers.DateTimeField(allow_null=True)
        upcoming_amount_cents = serializers.IntegerField(
            allow_null=True, help_text="The next invoice in minor units; null for members who are not owners, and "
                                       "without a subscription.")
        currency = serializers.CharField()

    def scoped_queryset(self):
        return Tenant.objects.filter(pk=self.tenant.pk).select_related("plan", "pending_plan")

    @extend_schema(responses={200: OutputSerializer, **_errors()}, tags=["billing"])
    def get(self, request):
        overview = billing_overview(tenant=self.get_queryset().get(),
                                    show_amounts=policy.can_see_billing(self.membership))
        return Response(self.OutputSerializer(overview).data)
