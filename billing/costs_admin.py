"""The staff page of the cost model: revenue, cost and margin per plan and per tenant, the losers, the CSV, and the
unit prices' form (Billing › Costs and margins)."""
import csv
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from django import forms
from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.template.response import TemplateResponse
from django.urls import reverse

from billing import costs, services
from billing.models import CostRates
from metering import periods

CENT = Decimal("0.01")
MILLI = Decimal("0.001")
HOUR = Decimal(3600)
FORMATS = ("html", "csv")
CSV_COLUMNS = ("scope", "plan", "tenant", "tenants", "losing", "workspace_hours", "storage_gb_months", "egress_gb",
               "fee", "overage", "revenue", "compute", "memory", "storage", "egress", "fixed", "cost", "margin",
               "margin_percent", "currency")


def money(value):
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def plain(value):
    """A price as written, without the column's trailing zeros (0.0000240000 → 0.000024)."""
    return format(value.normalize(), "f")


def figures(row):
    """The shown figures of a tenant's or plan's margin, rounded once here and as text (the template does no number
    formatting: 15,000 localized Decimals took seconds) for the page and the CSV alike."""
    cost = row.cost
    if isinstance(row, costs.TenantMargin):
        usage, tenants, losing = row.usage, 1, int(row.losing)
        seconds, gb_months, egress = usage.workspace_seconds, usage.storage_gb_months, usage.egress_gb
    else:
        tenants, losing = row.tenants, row.losing
        seconds, gb_months, egress = row.workspace_seconds, row.storage_gb_months, row.egress_gb
    percent = (row.margin * 100 / row.revenue).quantize(Decimal("0.1"), rounding=ROUND_HALF_UP) if row.revenue else ""
    shown = {
        "tenants": tenants, "losing": losing,
        "workspace_hours": (Decimal(seconds) / HOUR).quantize(CENT, rounding=ROUND_HALF_UP),
        "storage_gb_months": gb_months.quantize(MILLI, rounding=ROUND_HALF_UP),
        "egress_gb": egress.quantize(MILLI, rounding=ROUND_HALF_UP),
        "fee": money(row.fee), "overage": money(row.overage), "revenue": money(row.revenue),
        "compute": money(cost.compute), "memory": money(cost.memory), "storage": money(cost.storage),
        "egress": money(cost.egress), "fixed": money(cost.fixed), "cost": money(cost.total),
        "margin": money(row.margin), "margin_percent": percent, "currency": row.currency,
    }
    return {**{name: str(value) for name, value in shown.items()}, "is_losing": row.margin < 0}


class MonthForm(forms.Form):
    month = forms.CharField(required=False, help_text="YYYY-MM (UTC billing month); empty: this month, so far.")
    format = forms.ChoiceField(required=False, choices=[(name, name) for name in FORMATS])

    def clean_month(self):
        value = self.cleaned_data["month"].strip()
        if not value:
            return None
        try:
            return datetime.strptime(value, "%Y-%m").replace(tzinfo=UTC)
        except ValueError:
            raise forms.ValidationError(f"'{value}' is not a month: write it as YYYY-MM, e.g. 2026-03.") from None


@admin.register(CostRates)
class CostRatesAdmin(admin.ModelAdmin):
    """The list is the margins page; the one row's change form edits the prices (change permission only)."""

    fieldsets = [
        ("Per unit used", {"fields": ["currency", "vcpu_second", "memory_gb_second", "default_vcpus",
                                      "default_memory_mb", "storage_gb_month", "egress_gb"]}),
        ("Fixed costs per month, shared equally by the tenants served", {
            "fields": ["warm_pool_month", "file_storage_month", "database_month"]}),
    ]
    readonly_fields = ("updated_at",)

    def has_add_permission(self, request):
        return False  # one row, made by the migration

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        services.cost_rates_update(rates=obj, actor=request.user)

    def changelist_view(self, request, extra_context=None):
        if not self.has_view_or_change_permission(request):
            raise PermissionDenied
        if request.method != "GET":
            raise PermissionDenied  # a read-only page: prices are edited on the rates' own form
        form = MonthForm(request.GET)
        if not form.is_valid():
            if request.GET.get("format") == "csv":
                detail = " ".join(message for errors in form.errors.values() for message in errors)
                return HttpResponse(detail, status=400, content_type="text/plain; charset=utf-8")
            return self._page(request, form, None, status=400)
        report = costs.margins(month_start=form.cleaned_data["month"])
        if form.cleaned_data["format"] == "csv":
            return self._csv(report)
        return self._page(request, form, report)

    def _page(self, request, form, report, status=200):
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "title": "Costs and margins", "report": report,
                   "can_change": self.has_change_permission(request)}
        if report is not None:
            month = report.month_start
            context.update(
                month=month, rates=report.rates, prices={
                    name: plain(getattr(report.rates, name))
                    for name in ("vcpu_second", "memory_gb_second", "storage_gb_month", "egress_gb")},
                previous=f"{periods.previous_month_start(month):%Y-%m}", following=f"{report.month_end:%Y-%m}",
                plans=[{"name": plan.plan_name, **figures(plan)} for plan in report.plans],
                total=figures(report.total),
                tenants=[{"tenant": row, **figures(row)} for row in report.tenants],
                losers=[{"tenant": row, **figures(row)} for row in report.losers],
                foreign=sorted({row.currency for row in report.plans if row.currency != report.rates.currency}),
                rates_url=reverse("admin:billing_costrates_change", args=[CostRates.SINGLETON]),
            )
        return TemplateResponse(request, "admin/billing/costs.html", context, status=status)

    def _csv(self, report):
        response = HttpResponse(content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="margins-{report.month_start:%Y-%m}.csv"'
        writer = csv.writer(response)
        writer.writerow(CSV_COLUMNS)
        rows = [("plan", plan.plan_slug, "", figures(plan)) for plan in report.plans]
        rows.append(("total", "", "", figures(report.total)))
        rows += [("tenant", row.plan_slug, row.slug, figures(row)) for row in report.tenants]
        for scope, plan, tenant, shown in rows:
            writer.writerow([scope, plan, tenant, *(shown[name] for name in CSV_COLUMNS[3:])])
        return response
