"""The control plane of metering: meters, events and roll-ups (read-only), service tokens, corrections, limits."""
from django import forms
from django.contrib import admin, messages
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse

from core import sql
from metering import meters, selectors, services, tokens
from metering.models import (
    Meter,
    ServiceToken,
    TenantMeteringSettings,
    UsageEvent,
    UsageNotice,
    UsageRollup,
)
from tenants.exceptions import ServiceError
from tenants.models import Tenant


class ReadOnlyAdmin(admin.ModelAdmin):
    """Usage is append-only: nobody edits or deletes a fact here (corrections are new events)."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(Meter)
class MeterAdmin(admin.ModelAdmin):
    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        meters.meter_cache.reload()

    list_display = ("slug", "name", "unit", "aggregation", "billable", "declared_by", "active")
    list_filter = ("declared_by", "aggregation", "billable", "active")
    search_fields = ("slug", "name")

    def get_readonly_fields(self, request, obj=None):
        # Roll-ups copy the aggregation, and events reference the slug's meaning: both are fixed once used.
        return ("slug", "aggregation", "created_at") if obj else ("created_at",)

    def has_delete_permission(self, request, obj=None):
        return False


@admin.register(UsageEvent)
class UsageEventAdmin(ReadOnlyAdmin):
    list_display = ("timestamp", "tenant_slug", "meter", "quantity", "source", "event_id", "recorded_at")
    list_filter = ("source", "meter")
    search_fields = ("=event_id", "=tenant_slug")
    list_select_related = ("meter",)
    show_full_result_count = False  # the table holds millions of rows: no COUNT(*) per page
    ordering = ("-timestamp",)

    def get_urls(self):
        return [
            path("correct/", self.admin_site.admin_view(self.correction_view), name="metering_usage_correct"),
            *super().get_urls(),
        ]

    def correction_view(self, request):
        # A correction changes what a tenant pays: it takes adding usage events, not only reading them.
        if not request.user.is_staff or not request.user.has_perm("metering.add_usageevent"):
            return redirect("admin:index")
        form = CorrectionForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                event = services.usage_correction_record(
                    tenant=data["tenant"], meter=data["meter"], quantity=data["quantity"], reason=data["reason"],
                    actor=request.user)
            except ServiceError as exc:
                form.add_error(None, exc.message)
            else:
                kind = "credit" if event.quantity < 0 else "debit"
                messages.success(request, f"Recorded a {kind} of {abs(event.quantity)} {data['meter'].unit} of "
                                          f"{data['meter'].slug} for {data['tenant'].slug}.")
                return redirect(reverse("admin:metering_usageevent_changelist") + "?source__exact=correction")
        context = {**self.admin_site.each_context(request), "title": "Correct usage (credit or debit)",
                   "form": form, "opts": self.model._meta}
        return TemplateResponse(request, "admin/metering/correction.html", context)


class CorrectionForm(forms.Form):
    tenant = forms.ModelChoiceField(queryset=Tenant.objects.order_by("slug"))
    meter = forms.ModelChoiceField(queryset=Meter.objects.filter(aggregation=Meter.Aggregation.SUM))
    quantity = forms.IntegerField(help_text="Negative: a credit (usage removed). Positive: a debit.")
    reason = forms.CharField(widget=forms.Textarea(attrs={"rows": 3}), help_text="Kept in the audit trail.")

    def clean_quantity(self):
        if self.cleaned_data["quantity"] == 0:
            raise forms.ValidationError("A correction is not zero.")
        return self.cleaned_data["quantity"]


@admin.register(UsageRollup)
class UsageRollupAdmin(ReadOnlyAdmin):
    list_display = ("tenant", "meter", "period", "period_start", "quantity", "event_count", "last_quantity",
                    "updated_at")
    list_filter = ("period", "meter")
    search_fields = ("=tenant__slug",)
    list_select_related = ("tenant", "meter")
    show_full_result_count = False

    def get_urls(self):
        return [
            path("limits/", self.admin_site.admin_view(self.limits_view), name="metering_limits"),
            *super().get_urls(),
        ]

    def limits_view(self, request):
        """Tenants near (≥ 80 %) or over their allowances, and unusual usage (today > 3× the 7-day mean)."""
        if not self.has_view_permission(request):
            return redirect("admin:index")
        near = [
            {"tenant": tenant, **item, "percent": round(item["ratio"] * 100)}
            for tenant, item in selectors.tenants_near_limits()
        ]
        context = {**self.admin_site.each_context(request), "title": "Usage: limits and unusual usage",
                   "near": near, "unusual": selectors.unusual_usage(), "opts": self.model._meta}
        return TemplateResponse(request, "admin/metering/limits.html", context)


@admin.register(UsageNotice)
class UsageNoticeAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "tenant", "meter", "kind", "period", "period_start", "used", "included")
    list_filter = ("kind", "period", "meter")


@admin.register(TenantMeteringSettings)
class TenantMeteringSettingsAdmin(admin.ModelAdmin):
    list_display = ("tenant", "timezone")
    autocomplete_fields = ()

    def save_model(self, request, obj, form, change):
        from metering.periods import zone, zone_forget

        if zone(obj.timezone).key != obj.timezone:
            messages.warning(request, f"'{obj.timezone}' is not a known time zone; UTC is used.")
        super().save_model(request, obj, form, change)
        zone_forget(obj.tenant_id)  # this process at once, the others within periods.ZONE_TTL


class ServiceTokenForm(forms.ModelForm):
    class Meta:
        model = ServiceToken
        fields = ("name",)


@admin.register(ServiceToken)
class ServiceTokenAdmin(admin.ModelAdmin):
    form = ServiceTokenForm
    list_display = ("name", "prefix", "created_at", "created_by", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "created_at", "created_by", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        token, plaintext = tokens.service_token_create(name=obj.name, actor=request.user)
        obj.__dict__.update({k: v for k, v in token.__dict__.items() if not k.startswith("_")})
        sql.loaded(obj)  # admin's redirect treats it as the saved row it now is
        messages.warning(request, f"Service token '{token.name}' created. Copy it now, it is not shown again: "
                                  f"{plaintext}")

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the audit trail names the token

    @admin.action(description="Revoke the selected service tokens")
    def revoke(self, request, queryset):
        for token in queryset.filter(revoked_at__isnull=True):
            tokens.service_token_revoke(token=token, actor=request.user)
        self.message_user(request, "Revoked.")
