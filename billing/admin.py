"""The control plane of billing: accounts, billing events, deliveries (dead letters, retry), invoices (HTML, PDF)."""
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
    ReportedUsage,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """Money records: written by services only, never edited or deleted here."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


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

# The cost model's page and unit prices live in their own module (Billing › Costs and margins).
from billing import costs_admin  # noqa: E402, F401
