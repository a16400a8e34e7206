"""Admin › Insights › Business metrics: one page per figure (chart, table, CSV) over a range of days, for staff with
the view permission (tenants.policy.can_see_business_metrics)."""
import csv

from django.contrib import admin
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone

from insights.forms import RangeForm
from insights.models import BusinessMetrics
from insights.reports import REPORTS
from tenants import policy


@admin.register(BusinessMetrics)
class BusinessMetricsAdmin(admin.ModelAdmin):
    """Read-only pages, no rows: the model is only their place in admin and their permission."""

    def has_module_permission(self, request):
        return policy.can_see_business_metrics(request.user)

    def has_view_permission(self, request, obj=None):
        return policy.can_see_business_metrics(request.user)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def get_urls(self):
        view = self.admin_site.admin_view
        return [path("", view(self.index_view), name="insights_businessmetrics_changelist"),
                path("<slug:name>/", view(self.report_view), name="insights_businessmetrics_report")]

    def _allowed(self, request):
        if not self.has_view_permission(request):
            raise PermissionDenied
        if request.method not in ("GET", "HEAD"):
            raise PermissionDenied  # read-only pages

    def index_view(self, request):
        self._allowed(request)
        pages = [{"name": name, "url": reverse("admin:insights_businessmetrics_report", args=[name]),
                  "title": builder.__doc__} for name, builder in REPORTS.items()]
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "title": "Business metrics",
                   "pages": pages}
        return TemplateResponse(request, "admin/insights/index.html", context)

    def report_view(self, request, name):
        self._allowed(request)
        builder = REPORTS.get(name)
        if builder is None:
            raise Http404("No such business metric.")
        form = RangeForm(request.GET)
        if not form.is_valid():
            if request.GET.get("format") == "csv":
                detail = " ".join(message for errors in form.errors.values() for message in errors)
                return HttpResponse(detail, status=400, content_type="text/plain; charset=utf-8")
            return self._page(request, form, None, status=400)
        start, end = form.cleaned_data["start"], form.cleaned_data["end"]
        report = builder(start, end, timezone.now())
        if form.cleaned_data["format"] == "csv":
            response = HttpResponse(content_type="text/csv; charset=utf-8")
            response["Content-Disposition"] = f'attachment; filename="{name}-{start:%Y-%m-%d}-{end:%Y-%m-%d}.csv"'
            writer = csv.writer(response)
            writer.writerow(report.columns)
            writer.writerows(report.rows)
            return response
        return self._page(request, form, report, start=start, end=end)

    def _page(self, request, form, report, status=200, start=None, end=None):
        context = {**self.admin_site.each_context(request), "opts": self.model._meta, "form": form,
                   "report": report, "title": report.title if report else "Business metrics",
                   "index_url": reverse("admin:insights_businessmetrics_changelist")}
        if report is not None:
            context["csv_query"] = f"start={start:%Y-%m-%d}&end={end:%Y-%m-%d}&format=csv"
        return TemplateResponse(request, "admin/insights/report.html", context, status=status)
