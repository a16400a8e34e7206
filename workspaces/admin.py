"""The control plane for templates (warm target, pause), nodes (drain), containers, sessions and the pool overview."""
from django.contrib import admin, messages
from django.db.models import Count, Q
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html

from workspaces import pool, reconciler, selectors, services
from workspaces.admin_what_if import what_if_view
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate
from workspaces.pool import health


@admin.register(WorkspaceTemplate)
class WorkspaceTemplateAdmin(admin.ModelAdmin):
    list_display = ("slug", "name", "image", "warm_min", "warm_max", "pool_target", "warm_now", "max_containers",
                    "enabled", "pool_paused")
    list_editable = ("warm_min", "warm_max")
    list_filter = ("enabled", "pool_paused")
    search_fields = ("slug", "name", "image")
    actions = ("pause_pools", "resume_pools", "fill_pools")
    change_list_template = "admin/workspaces/template_change_list.html"

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _warm=Count("containers", filter=Q(containers__state=Container.State.WARM)))

    @admin.display(description="warm now", ordering="_warm")
    def warm_now(self, obj):
        return obj._warm

    @admin.action(description="Pause the pool (no opens, no refills)", permissions=["change"])
    def pause_pools(self, request, queryset):
        for template in queryset:
            services.pool_pause(template=template, paused=True, actor=request.user)
        self.message_user(request, f"Paused {queryset.count()} pool(s).")

    @admin.action(description="Resume the pool", permissions=["change"])
    def resume_pools(self, request, queryset):
        for template in queryset:
            services.pool_pause(template=template, paused=False, actor=request.user)
        self.message_user(request, f"Resumed {queryset.count()} pool(s).")

    @admin.action(description="Fill the pool now", permissions=["change"])
    def fill_pools(self, request, queryset):
        started = sum(pool.pool_fill(template_id=t.pk) for t in queryset)
        self.message_user(request, f"Started {started} container(s).")

    def get_urls(self):
        return [
            path("pool/", self.admin_site.admin_view(self.pool_view), name="workspaces_pool_overview"),
            path("pool/what-if/", self.admin_site.admin_view(lambda request: what_if_view(self, request)),
                 name="workspaces_pool_what_if"),
            *super().get_urls(),
        ]

    def pool_view(self, request):
        return TemplateResponse(request, "admin/workspaces/pool_overview.html", {
            **self.admin_site.each_context(request),
            "title": "Warm pools",
            "rows": selectors.pool_overview(),
            "demand": selectors.pool_demand(),
            "opts": self.model._meta,
        })


@admin.register(Node)
class NodeAdmin(admin.ModelAdmin):
    list_display = ("name", "engine_url", "enabled", "draining", "healthy", "failed_calls", "last_seen_at",
                    "cpus", "memory_mb", "max_containers", "active_containers", "last_error_short")
    list_filter = ("enabled", "draining")
    readonly_fields = ("last_seen_at", "failed_calls", "events_cursor_ns", "last_error")
    actions = ("drain", "undrain", "reconcile_now")

    def get_queryset(self, request):
        return super().get_queryset(request).annotate(
            _active=Count("containers", filter=Q(containers__state__in=Container.ACTIVE_STATES)),
            _healthy=health.node_healthy())

    @admin.display(description="healthy", boolean=True, ordering="_healthy")
    def healthy(self, obj):
        return obj._healthy

    @admin.display(description="containers", ordering="_active")
    def active_containers(self, obj):
        return obj._active

    @admin.display(description="last error")
    def last_error_short(self, obj):
        return obj.last_error[:80]

    @admin.action(description="Drain: end its sessions, remove its warm containers, place nothing new",
                  permissions=["change"])
    def drain(self, request, queryset):
        for node in queryset:
            services.node_drain(node=node, actor=request.user)
        self.message_user(request, f"Drained {queryset.count()} node(s).")

    @admin.action(description="Undrain: place containers again", permissions=["change"])
    def undrain(self, request, queryset):
        for node in queryset:
            services.node_undrain(node=node, actor=request.user)
        self.message_user(request, f"{queryset.count()} node(s) back in service.")

    @admin.action(description="Reconcile all nodes now", permissions=["change"])
    def reconcile_now(self, request, queryset):
        report = reconciler.reconcile()
        self.message_user(request, f"Reconciled: {report}", level=messages.INFO)


@admin.register(Container)
class ContainerAdmin(admin.ModelAdmin):
    list_display = ("name", "template", "node", "state", "address", "created_at", "claimed_at", "last_error")
    list_filter = ("state", "node", "template")
    search_fields = ("name", "engine_id", "address")
    readonly_fields = [f.name for f in Container._meta.fields]

    def has_add_permission(self, request):
        return False


@admin.register(Session)
class SessionAdmin(admin.ModelAdmin):
    list_display = ("id", "tenant", "user", "workspace", "container_link", "cold_start", "open_ms", "started_at",
                    "last_activity_at", "ended_at", "end_reason")
    list_filter = ("end_reason", "cold_start", ("ended_at", admin.EmptyFieldListFilter), "tenant")
    search_fields = ("user__email", "workspace__name", "tenant__slug")
    readonly_fields = [f.name for f in Session._meta.fields]
    actions = ("end_sessions",)

    def has_add_permission(self, request):
        return False

    @admin.display(description="container")
    def container_link(self, obj):
        url = reverse("admin:workspaces_container_change", args=[obj.container_id])
        return format_html('<a href="{}">{}</a>', url, obj.container)

    @admin.action(description="End the selected sessions", permissions=["change"])
    def end_sessions(self, request, queryset):
        for session in queryset.filter(ended_at__isnull=True):
            services.session_end(session=session, reason=Session.EndReason.CLOSED, actor=request.user)
        self.message_user(request, "Sessions ended.")


@admin.register(Workspace)
class WorkspaceAdmin(admin.ModelAdmin):
    list_display = ("name", "tenant", "owner", "template", "host_key", "created_at", "deleted_at")
    list_filter = ("template", ("deleted_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "owner__email", "tenant__slug", "host_key")
    readonly_fields = ("host_key", "storage_path", "created_at", "deleted_at")
