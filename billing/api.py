"""REST API v1 of billing: the tenant's plan, subscription status, period and next invoice amount; its invoices.

Amounts are the owners' (tenants.policy.can_see_billing): for other members `upcoming_amount_cents` is null, the rest
is shown, as the portal shows every member the plan and its status. Invoices are the owners' only.
"""
from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.response import Response

from billing import selectors
from billing.invoices import invoice_render_pdf
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


class _OwnersOnly:
    def check_permissions(self, request):
        super().check_permissions(request)
        if not policy.can_see_billing(self.membership):
            self.permission_denied(request, message="Only the tenant's owners see its invoices.")


class InvoiceListApi(_OwnersOnly, TenantScopedView):
    """The tenant's invoices from both providers, newest first (billing.selectors.invoice_listing): Stripe's (the
    subscription and its overage) and Hearth's own issued ones (contracts paid by bank transfer; PDF here)."""

    class OutputSerializer(serializers.Serializer):
        provider = serializers.ChoiceField(choices=["stripe", "invoice"])
        id = serializers.CharField()
        number = serializers.CharField(allow_blank=True)
        status = serializers.CharField()
        period_start = serializers.DateTimeField(allow_null=True)
        period_end = serializers.DateTimeField(allow_null=True)
        amount_cents = serializers.IntegerField(help_text="The total in minor units.")
        currency = serializers.CharField()
        created = serializers.DateTimeField()
        pdf_url = serializers.URLField(allow_null=True)
        page_url = serializers.URLField(allow_null=True, help_text="Stripe's hosted invoice page.")

    def scoped_queryset(self):
        return selectors.invoices_for(self.tenant)

    @extend_schema(responses={200: OutputSerializer(many=True), **_errors(403)}, tags=["billing"])
    def get(self, request):
        rows = selectors.invoice_listing(self.tenant)
        for row in rows:
            if row["hearth_id"] is not None:
                row["pdf_url"] = request.build_absolute_uri(reverse("api-invoice-pdf", args=[row["hearth_id"]]))
        return Response(self.OutputSerializer(rows, many=True).data)


class InvoicePdfApi(_OwnersOnly, TenantScopedView):
    """One of Hearth's own issued invoices as PDF; another tenant's is 404 like a missing one."""

    def scoped_queryset(self):
        return selectors.invoices_for(self.tenant)

    @extend_schema(responses={(200, "application/pdf"): OpenApiResponse(OpenApiTypes.BINARY), **_errors(403, 404)},
                   tags=["billing"])
    def get(self, request, pk):
        invoice = selectors.invoice_get(self.tenant, pk, issued_only=True)
        response = HttpResponse(invoice_render_pdf(invoice), content_type="application/pdf")
        response["Content-Disposition"] = f'inline; filename="{invoice.number}.pdf"'
        return response
