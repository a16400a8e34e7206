"""The control plane of billing: accounts, billing events, deliveries (dead letters, retry), invoices (HTML, PDF),
reconciliation gaps (re-send) and revenue at risk on the staff overview."""
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils.html import format_html

from billing import invoices, services
from billing.models import (
    BillingAccount,
    BillingEvent,
    Delivery,
    Invoice,
    InvoiceCounter,
    InvoiceLine,
    ReconciliationGap,
    ReportedUsage,
)
from billing.reconciliation import revenue_at_risk
from core.admin_actions import run_service
from metering.admin import ReadOnlyAdmin  # money records too: written by services only, never edited here
from tenants.admin import staff_overview_figure


@admin.register(BillingAccount)
class BillingAccountAdmin(admin.ModelAdmin):
    list_display = ("tenant", "providers", "stripe_customer_id", "fixed_fee_cents", "updated_at")
    search_fields = ("tenant__slug", "stripe_customer_id")
    raw_id_fields = ("tenant",)


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("provider", "state", "attempts", "next_attempt_at", "reference", "last_error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(BillingEvent)
class BillingEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant_slug", "kind", "meter", "period_start", "quantity", "amount_cents",
                    "currency", "identifier")
    list_filter = ("kind", "currency")
    search_fields = ("=tenant_slug", "=identifier")
    list_select_related = ("meter",)
    inlines = [DeliveryInline]


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("event", "provider", "state", "attempts", "next_attempt_at", "delivered_at", "short_error")
    list_filter = ("state", "provider")
    search_fields = ("=event__identifier", "=event__tenant_slug")
    list_select_related = ("event",)
    actions = ["retry"]

    @admin.display(description="last error")
    def short_error(self, obj):
        return obj.last_error[:120]

    def has_retry_permission(self, request):
        return request.user.has_perm("billing.retry_delivery")

    @admin.action(description="Retry the selected deliveries now", permissions=["retry"])
    def retry(self, request, queryset):
        count = services.deliveries_retry(delivery_ids=queryset.values_list("pk", flat=True), actor=request.user)
        self.message_user(request, f"{count} deliveries will be retried now.", messages.SUCCESS)


@admin.register(ReportedUsage)
class ReportedUsageAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "meter", "period_start", "quantity", "amount_cents", "updated_at")
    list_filter = ("meter",)
    search_fields = ("=tenant__slug",)


@admin.register(InvoiceCounter)
class InvoiceCounterAdmin(ReadOnlyAdmin):
    list_display = ("year", "last_number")


class InvoiceLineInline(admin.TabularInline):
    model = InvoiceLine
    fields = ("description", "quantity", "unit", "amount_cents", "event")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = ("__str__", "tenant_slug", "period_start", "status", "total_cents", "currency", "issued_at",
                    "documents")
    list_filter = ("status", "year")
    search_fields = ("=tenant_slug",)
    inlines = [InvoiceLineInline]

    @admin.display(description="documents")
    def documents(self, obj):
        return format_html('<a href="{}">HTML</a> · <a href="{}">PDF</a>',
                           reverse("admin:billing_invoice_html", args=[obj.pk]),
                           reverse("admin:billing_invoice_pdf", args=[obj.pk]))

    def get_urls(self):
        return [
            path("<int:pk>/html/", self.admin_site.admin_view(self.html_view), name="billing_invoice_html"),
            path("<int:pk>/pdf/", self.admin_site.admin_view(self.pdf_view), name="billing_invoice_pdf"),
            *super().get_urls(),
        ]

    def _invoice(self, request, pk):
        if not self.has_view_permission(request):
            raise PermissionDenied
        return get_object_or_404(Invoice, pk=pk)

    def html_view(self, request, pk):
        return HttpResponse(invoices.invoice_render_html(self._invoice(request, pk)))

    def pdf_view(self, request, pk):
        invoice = self._invoice(request, pk)
        response = HttpResponse(invoices.invoice_render_pdf(invoice), content_type="application/pdf")
        name = invoice.number or f"draft-{invoice.tenant_slug}-{invoice.period_start:%Y-%m}"
        response["Content-Disposition"] = f'inline; filename="{name}.pdf"'
        return response


def _money(cents):
    return f"{cents // 100}.{cents % 100:02d}"


@admin.register(ReconciliationGap)
class ReconciliationGapAdmin(ReadOnlyAdmin):
    """What the last reconciliation of each month found (`manage.py reconcile_billing`, nightly); re-send from here."""

    list_display = ("period", "tenant_slug", "meter", "provider", "kind", "quantity", "amount", "currency",
                    "found_at", "resent_at")
    list_filter = ("kind", "provider", "period_start")
    search_fields = ("=tenant_slug",)
    list_select_related = ("meter",)
    actions = ["resend"]

    @admin.display(description="month", ordering="period_start")
    def period(self, obj):
        return f"{obj.period_start:%Y-%m}"

    @admin.display(description="amount", ordering="amount_cents")
    def amount(self, obj):
        return _money(obj.amount_cents)

    def changelist_view(self, request, extra_context=None):
        risk = revenue_at_risk()
        extra = {"subtitle": f"Revenue at risk: {_money(risk['cents'])} in {risk['gaps']} gaps"}
        return super().changelist_view(request, extra_context={**extra, **(extra_context or {})})

    def has_resend_permission(self, request):
        return request.user.has_perm("billing.resend_gap")

    @admin.action(description="Re-send what the selected gaps are missing", permissions=["resend"])
    def resend(self, request, queryset):
        run_service(self, request, queryset.select_related("tenant", "meter").order_by("pk"),
                     lambda gap: services.reconciliation_gap_resend(gap=gap, actor=request.user),
                     "Re-sent (the drain delivers now; the next reconciliation confirms)")


@staff_overview_figure
def revenue_at_risk_figure(request):
    if not request.user.has_perm("billing.view_reconciliationgap"):
        return None
    risk = revenue_at_risk()
    months = ", ".join(f"{month:%Y-%m}: {_money(cents)}" for month, cents in risk["months"][:3])
    return {"label": "Revenue at risk (reconciliation)",
            "value": f"{_money(risk['cents'])} in {risk['gaps']} gaps" + (f" ({months})" if months else ""),
            "url": reverse("admin:billing_reconciliationgap_changelist")}
# The cost model's page and unit prices live in their own module (Billing › Costs and margins).
from billing import costs_admin  # noqa: E402, F401
