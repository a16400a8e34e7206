"""The control plane: staff manage tenants, plans, invitations, tokens and the outbox here, through the services.

Nothing that changes a tenant is saved by the admin's generic forms: changes go through `tenants.services`
so that each one is checked and leaves its audit row. The audit trail itself is read-only. Every admin action, on
any app's model, needs a write permission (`admin_actions_guard`).
"""
from datetime import timedelta
from pathlib import Path

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import forms as auth_forms
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.forms.models import model_to_dict
from django.http import FileResponse, Http404
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from core.admin_actions import run_service
from tenants import events, services
from tenants.audit import audit_record
from tenants.exceptions import ServiceError
from tenants.models import (
    ApiToken,
    AuditLog,
    Invitation,
    Membership,
    OutboxEvent,
    Plan,
    Tenant,
    TenantExport,
    User,
)

# The admin index links the staff overview (templates/admin/hearth_index.html).
admin.site.index_template = "admin/hearth_index.html"
admin.site.site_header = "Hearth control plane"
admin.site.site_title = "Hearth admin"


class ReadOnlyAdminMixin:
    """Staff may look, not write: every change goes through a service action instead."""

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


HEARTH_APPS = ("tenants", "metering", "workspaces", "billing", "sso", "insights")

_overview_figures = []


def staff_overview_figure(fn):
    """Register fn(request) -> {"label", "value", "url"} (or None: nothing to show) for the staff overview: other
    apps' headline figures (billing's revenue at risk) without the tenants app depending on them."""
    _overview_figures.append(fn)
    return fn


def admin_actions_guard(site):
    """Give every action of other apps' model admins (allauth's make_verified, dj-stripe's resyncs) that declares no
    write permission the change permission, so view-only staff cannot run them. Hearth's own actions declare theirs
    (tests/tenants/test_admin_permissions.py fails on one that does not). Called once all admins are registered."""
    for model_admin in site._registry.values():
        if type(model_admin).__module__.split(".")[0] in HEARTH_APPS:
            continue
        for func, _name, _description in model_admin._get_base_actions():
            if not set(getattr(func, "allowed_permissions", ())) - {"view"}:
                func.allowed_permissions = ("change",)


# --- users ---------------------------------------------------------------------------------------


class UserCreationForm(auth_forms.AdminUserCreationForm):
    class Meta:
        model = User
        fields = ["email"]

    def clean_email(self):
        # Addresses are stored lower-case everywhere (services, allauth); keep admin-made users alike.
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError(f"{email} already has an account.")
        return email


class UserChangeForm(auth_forms.UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    form = UserChangeForm
    add_form = UserCreationForm
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined", "last_login"]
    search_fields = ["email", "first_name", "last_name"]
    fieldsets = [
        (None, {"fields": ["email", "password"]}),
        ("Personal info", {"fields": ["first_name", "last_name"]}),
        ("Permissions", {"fields": ["is_active", "is_staff", "is_superuser", "groups", "user_permissions"]}),
        ("Dates", {"fields": ["last_login", "date_joined"]}),
    ]
    add_fieldsets = [(None, {"classes": ["wide"], "fields": ["email", "usable_password", "password1", "password2"]})]

    def save_model(self, request, obj, form, change):
        # Deactivation goes through the service: the user's running workspaces end with it, and it is audited.
        deactivating = change and "is_active" in form.changed_data and not obj.is_active
        if deactivating:
            obj.is_active = True
        super().save_model(request, obj, form, change)
        if deactivating:
            services.user_deactivate(user=obj, actor=request.user)
            obj.is_active = False

    def get_deleted_objects(self, objs, request):
        # user_delete removes the user's memberships, tokens and workspaces itself: the user's own delete
        # permission is the one that counts, not the read-only admins' of what goes with them.
        to_delete, model_count, _perms_needed, protected = super().get_deleted_objects(objs, request)
        return to_delete, model_count, set(), protected

    def delete_model(self, request, obj):
        services.user_delete(user=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for user in queryset.order_by("pk"):
            services.user_delete(user=user, actor=request.user)


# --- plans ---------------------------------------------------------------------------------------


@admin.register(Plan)
class PlanAdmin(admin.ModelAdmin):
    list_display = [
        "slug", "name", "price", "daily_minutes", "monthly_hours", "storage_mb", "seats",
        "max_concurrent_workspaces", "idle_timeout_minutes", "max_session_hours", "overage_price_cents_per_hour",
        "public", "sso_allowed", "tenant_count",
    ]
    list_filter = ["public", "sso_allowed"]
    ordering = ["sort_order", "slug"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_tenants=Count("tenants"))

    @admin.display(description="tenants", ordering="_tenants")
    def tenant_count(self, plan):
        return plan._tenants

    @admin.display(description="monthly price")
    def price(self, plan):
        if plan.monthly_price_cents is None:
            return "custom"
        return f"{plan.monthly_price_cents / 100:.2f} {plan.currency.upper()}"

    def get_readonly_fields(self, request, obj=None):
        return ["slug"] if obj else []  # tenants, billing and metering refer to plans by slug

    def save_model(self, request, obj, form, change):
        # Plan allowances are money: the change and its audit row commit together.
        with transaction.atomic():
            before = model_to_dict(Plan.objects.get(pk=obj.pk)) if change else {}
            super().save_model(request, obj, form, change)
            after = model_to_dict(obj)
            changed = {k: [before.get(k), v] for k, v in after.items() if before.get(k) != v and k != "id"}
            audit_record(tenant=None, actor=request.user, action="plan.changed" if change else "plan.created",
                         target=obj.slug, data=changed)

    def has_delete_permission(self, request, obj=None):
        return False  # tenants and past usage refer to plans; hide a plan by making it not public


# --- tenants -------------------------------------------------------------------------------------


class MembershipInline(admin.TabularInline):
    """Members as they are; roles change through the portal or API (audited, owner rules enforced)."""

    model = Membership
    fields = ["user", "role", "created_at"]
    readonly_fields = fields
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class ChangePlanForm(forms.Form):
    plan = forms.ModelChoiceField(queryset=Plan.objects.all(), empty_label=None,
                                  help_text="Every plan, public or not. The seat limit of the new plan applies.")


class OnboardForm(forms.Form):
    name = forms.CharField(max_length=120)
    owner_email = forms.EmailField(help_text="Created if new; they set a password with 'Forgot password'.")
    plan = forms.ModelChoiceField(queryset=Plan.objects.all(), empty_label=None, to_field_name="slug",
                                  initial="free")
    slug = forms.SlugField(max_length=50, required=False, help_text="Empty: derived from the name.")
    synthetic = forms.BooleanField(required=False, help_text="Load tests and demos: excluded from revenue.")


class OffboardForm(forms.Form):
    confirm = forms.CharField(max_length=20, help_text="Type OFFBOARD: the data is exported, then deleted.")

    def clean_confirm(self):
        if self.cleaned_data["confirm"].strip() != "OFFBOARD":
            raise forms.ValidationError("Type OFFBOARD to confirm.")
        return "OFFBOARD"


class SuspendForm(forms.Form):
    reason = forms.CharField(max_length=200, required=False, help_text="Kept in the audit trail.")


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "plan", "status", "synthetic", "member_count", "created_at"]
    list_filter = ["plan", "status", "synthetic"]
    search_fields = ["slug", "name", "memberships__user__email"]
    list_select_related = ["plan"]
    date_hierarchy = "created_at"
    ordering = ["-created_at"]
    inlines = [MembershipInline]
    fields = ["slug", "name", "plan", "status", "synthetic", "created_at", "storage", "audit_trail"]
    readonly_fields = ["slug", "plan", "status", "synthetic", "created_at", "storage", "audit_trail"]
    actions = ["suspend", "resume", "change_plan", "offboard"]

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(_members=Count("memberships", distinct=True))

    @admin.display(description="members", ordering="_members")
    def member_count(self, tenant):
        return tenant._members

    @admin.display(description="storage directory")
    def storage(self, tenant):
        return str(services.tenant_storage_path(tenant.slug))

    @admin.display(description="audit trail")
    def audit_trail(self, tenant):
        rows = AuditLog.objects.filter(tenant=tenant).order_by("-created_at", "-pk")[:10]
        url = reverse("admin:tenants_auditlog_changelist") + f"?tenant_key={tenant.pk}"
        recent = format_html_join(
            "", "<li>{} · {} · {} {}</li>",
            ((f"{r.created_at:%Y-%m-%d %H:%M}", r.actor_label, r.action, r.target) for r in rows),
        )
        return format_html('<ul style="margin:0">{}</ul><a href="{}">Full audit trail ({})</a>', recent, url,
                           AuditLog.objects.filter(tenant_key=tenant.pk).count())

    def add_view(self, request, form_url="", extra_context=None):
        """Onboarding, not a bare row: the owner, storage directory, audit row and event come with it."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = OnboardForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                with transaction.atomic():
                    owner = services.user_get_or_create(email=data["owner_email"])
                    tenant = services.tenant_onboard(name=data["name"], owner=owner, plan=data["plan"],
                                                     slug=data["slug"] or None, synthetic=data["synthetic"],
                                                     actor=request.user)
            except ServiceError as exc:
                form.add_error(exc.field if exc.field in form.fields else None, exc.message)
            else:
                self.message_user(request, f"Onboarded {tenant.slug}, owned by {owner.email}.", messages.SUCCESS)
                return redirect("admin:tenants_tenant_change", tenant.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": "Onboard a tenant",
            "form": form,
            "opts": self.model._meta,
            "action": "",
        }
        return TemplateResponse(request, "admin/tenants/tenant/onboard_form.html", context)

    def has_delete_permission(self, request, obj=None):
        return False  # offboarding exports the data first and keeps the trail

    def save_model(self, request, obj, form, change):
        # Only the name is editable here; renaming goes through the service for its audit row.
        services.tenant_rename(tenant=obj, name=form.cleaned_data["name"], actor=request.user)

    # --- actions ---

    @admin.action(description="Suspend selected tenants (end sessions, block new ones)", permissions=["change"])
    def suspend(self, request, queryset):
        if "apply" in request.POST:
            form = SuspendForm(request.POST)
            if form.is_valid():
                reason = form.cleaned_data["reason"] or "suspended by staff"
                run_service(self, request, queryset,
                             lambda t: services.tenant_suspend(tenant=t, actor=request.user, reason=reason),
                             "Suspended")
                return None
        else:
            form = SuspendForm()
        return self._intermediate(request, queryset, form, "suspend", "Suspend tenants")

    @admin.action(description="Resume selected tenants", permissions=["change"])
    def resume(self, request, queryset):
        run_service(self, request, queryset, lambda t: services.tenant_resume(tenant=t, actor=request.user),
                     "Resumed")

    @admin.action(description="Change the plan of selected tenants…", permissions=["change"])
    def change_plan(self, request, queryset):
        if "apply" in request.POST:
            form = ChangePlanForm(request.POST)
            if form.is_valid():
                plan = form.cleaned_data["plan"]
                run_service(self, request, queryset,
                             lambda t: services.tenant_change_plan(tenant=t, plan=plan, actor=request.user),
                             f"Moved to {plan.name}")
                return None
        else:
            form = ChangePlanForm()
        return self._intermediate(request, queryset, form, "change_plan", "Change plan")

    def has_offboard_permission(self, request):
        # Offboarding deletes the tenant (after exporting it): the delete permission, which the row form never uses.
        return request.user.has_perm("tenants.delete_tenant")

    @admin.action(description="Offboard selected tenants (export their data, then delete them)…",
                  permissions=["offboard"])
    def offboard(self, request, queryset):
        if "apply" in request.POST:
            form = OffboardForm(request.POST)
            if form.is_valid():
                run_service(self, request, queryset,
                             lambda t: services.tenant_offboard(tenant=t, actor=request.user),
                             "Offboarded (archives under Tenant exports)")
                return None
        else:
            form = OffboardForm()
        return self._intermediate(request, queryset, form, "offboard", "Offboard tenants")

    def _intermediate(self, request, queryset, form, action, title):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "form": form,
            "action": action,
            "tenants": queryset,
            "opts": self.model._meta,
            "action_checkbox_name": admin.helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/tenants/tenant/action_form.html", context)

    # --- the staff overview ---

    def get_urls(self):
        overview = path("overview/", self.admin_site.admin_view(self.overview_view), name="tenants_overview")
        return [overview, *super().get_urls()]

    def overview_view(self, request):
        if not self.has_view_permission(request):
            return redirect("admin:index")
        now = timezone.now()
        start = (now - timedelta(days=29)).date()
        live = Tenant.objects.exclude(status=Tenant.Status.OFFBOARDED)
        by_plan = (
            Plan.objects.annotate(
                n_tenants=Count("tenants", filter=~Q(tenants__status=Tenant.Status.OFFBOARDED)),
                n_real=Count("tenants", filter=Q(tenants__synthetic=False, tenants__status=Tenant.Status.ACTIVE)),
            ).order_by("sort_order", "slug")
        )
        by_status = {row["status"]: row["n"] for row in Tenant.objects.values("status").annotate(n=Count("pk"))}
        per_day = {
            row["day"]: row["n"]
            for row in Tenant.objects.filter(created_at__date__gte=start)
            .annotate(day=TruncDate("created_at"))
            .values("day")
            .annotate(n=Count("pk"))
        }
        days = [(start + timedelta(days=i)) for i in range(30)]
        signups = [(day, per_day.get(day, 0)) for day in days]
        peak = max([n for _, n in signups] + [1])
        mrr_cents = live.filter(status=Tenant.Status.ACTIVE, synthetic=False).aggregate(
            cents=Sum("plan__monthly_price_cents"))["cents"] or 0
        context = {
            **self.admin_site.each_context(request),
            "title": "Tenants overview",
            "opts": self.model._meta,
            "by_plan": by_plan,
            "by_status": [(status, by_status.get(status, 0)) for status in Tenant.Status.values],
            "signups": [(day, n, round(100 * n / peak)) for day, n in signups],
            "signups_total": sum(n for _, n in signups),
            "tenants_total": live.count(),
            "synthetic_total": live.filter(synthetic=True).count(),
            "members_total": Membership.objects.exclude(tenant__status=Tenant.Status.OFFBOARDED).count(),
            "list_price_mrr": mrr_cents / 100,
            "figures": [figure for figure in (fn(request) for fn in _overview_figures) if figure],
        }
        return TemplateResponse(request, "admin/tenants/overview.html", context)


@admin.register(Membership)
class MembershipAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["user", "tenant", "role", "created_at"]
    list_filter = ["role"]
    search_fields = ["user__email", "tenant__slug"]
    list_select_related = ["user", "tenant"]


# --- invitations, tokens -------------------------------------------------------------------------


@admin.register(Invitation)
class InvitationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["email", "tenant", "role", "state", "invited_by", "created_at", "expires_at"]
    list_filter = ["role", ("accepted_at", admin.EmptyFieldListFilter), ("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["email", "tenant__slug"]
    list_select_related = ["tenant", "invited_by"]
    actions = ["revoke"]

    @admin.display(description="state")
    def state(self, invitation):
        if invitation.accepted_at:
            return "accepted"
        if invitation.revoked_at:
            return "revoked"
        return "expired" if invitation.expires_at <= timezone.now() else "pending"

    def has_change_permission(self, request, obj=None):
        return False

    def has_revoke_permission(self, request):
        # The row form stays read-only (has_change_permission is False); revoking is the change staff may make.
        return request.user.has_perm("tenants.change_invitation")

    @admin.action(description="Revoke selected invitations", permissions=["revoke"])
    def revoke(self, request, queryset):
        run_service(self, request, queryset.select_related("tenant"),
                     lambda i: services.invitation_revoke(invitation=i, actor=request.user), "Revoked")


@admin.register(ApiToken)
class ApiTokenAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "prefix", "user", "tenant", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "name", "membership__user__email", "membership__tenant__slug"]
    list_select_related = ["membership__user", "membership__tenant"]
    actions = ["revoke"]

    @admin.display(ordering="membership__user__email")
    def user(self, token):
        return token.membership.user

    @admin.display(ordering="membership__tenant__slug")
    def tenant(self, token):
        return token.membership.tenant

    def has_revoke_permission(self, request):
        return request.user.has_perm("tenants.change_apitoken")  # the row form stays read-only

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        run_service(self, request, queryset.select_related("membership__tenant", "membership__user"),
                     lambda t: services.api_token_revoke(token=t, actor=request.user), "Revoked")


# --- audit trail, outbox, exports ----------------------------------------------------------------


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "tenant_slug", "tenant_key", "actor_label", "action", "target"]
    list_filter = ["action"]
    search_fields = ["tenant_slug", "=tenant_key", "actor_label", "action", "target"]
    date_hierarchy = "created_at"
    readonly_fields = ["created_at", "tenant", "tenant_slug", "tenant_key", "actor", "actor_label", "action", "target",
                       "data"]

    def get_actions(self, request):
        return {}  # not even "delete selected"


@admin.register(OutboxEvent)
class OutboxEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["created_at", "type", "tenant_slug", "state", "attempts", "next_attempt_at"]
    list_filter = ["type", ("dispatched_at", admin.EmptyFieldListFilter)]
    search_fields = ["type", "tenant_slug", "id"]
    readonly_fields = ["id", "type", "tenant", "tenant_slug", "payload", "created_at", "delivered_to",
                       "dispatched_at", "attempts", "next_attempt_at", "last_error"]
    actions = ["retry"]

    @admin.display(description="state")
    def state(self, event):
        if event.dispatched_at:
            return "delivered"
        return "failing" if event.last_error else "pending"

    def has_retry_permission(self, request):
        return request.user.has_perm("tenants.change_outboxevent")  # the row form stays read-only

    @admin.action(description="Retry delivery now", permissions=["retry"])
    def retry(self, request, queryset):
        due = events.outbox_retry(event_ids=queryset.values_list("pk", flat=True))
        self.message_user(request, f"{due} undelivered event(s) due now; delivered events are never repeated.",
                          messages.SUCCESS)


@admin.register(TenantExport)
class TenantExportAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["tenant_slug", "created_at", "size_bytes", "owner_emails", "download"]
    search_fields = ["tenant_slug", "owners__email"]
    readonly_fields = ["tenant_slug", "owners", "path", "size_bytes", "created_at", "download"]

    @admin.display(description="archive")
    def download(self, export):
        url = reverse("admin:tenants_tenantexport_download", args=[export.pk])
        return format_html('<a href="{}">{}</a>', url, Path(export.path).name)

    def get_urls(self):
        view = self.admin_site.admin_view(self.download_view)
        return [path("<int:pk>/download/", view, name="tenants_tenantexport_download"), *super().get_urls()]

    def download_view(self, request, pk):
        export = TenantExport.objects.filter(pk=pk).first()
        if export is None or not self.has_view_permission(request, export):
            raise Http404("No such export.")
        archive = Path(export.path).resolve()
        # Only files under EXPORT_ROOT are ever served, whatever the row says.
        if not archive.is_relative_to(Path(settings.EXPORT_ROOT).resolve()) or not archive.is_file():
            raise Http404("The archive file is missing.")
        return FileResponse(archive.open("rb"), as_attachment=True, filename=archive.name)

    @admin.display(description="owners")
    def owner_emails(self, export):
        return ", ".join(u.email for u in export.owners.all())

    def get_queryset(self, request):
        return super().get_queryset(request).prefetch_related("owners")
