"""Portal pages of the workspaces app: list, create, open (in a new tab), close, delete; the dashboard card."""
from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from tenants import policy
from tenants.exceptions import ServiceError
from tenants.forms import ActivityForm
from tenants.portal import activity_page, dashboard_card, tenant_view
from workspaces import selectors, services


@tenant_view
def workspace_list(request, membership):
    workspaces = list(selectors.workspace_list(tenant=membership.tenant, membership=membership))
    live = {s.workspace_id: s for s in selectors.session_list(tenant=membership.tenant, membership=membership)
            .filter(ended_at__isnull=True)}
    # A cold open that failed in its worker (the user opened it in another tab, which now says the session ended).
    failed = set(selectors.session_list(tenant=membership.tenant, membership=membership).filter(
        end_reason="failed", ended_at__gte=timezone.now() - timedelta(minutes=10)).values_list("workspace_id",
                                                                                                flat=True))
    for workspace in workspaces:
        workspace.live_session = live.get(workspace.pk)
        if workspace.live_session is not None and workspace.live_session.state == "starting":
            workspace.place = selectors.starting_place(session=workspace.live_session)
        workspace.start_failed = workspace.live_session is None and workspace.pk in failed
    return render(request, "workspaces/list.html", {
        "membership": membership,
        "workspaces": workspaces,
        "templates": selectors.template_list(),
        # While a container starts the page reloads itself, so its status turns to "open" without a click.
        "starting": any(s.state == "starting" for s in live.values()),
    })


@tenant_view
def session_list(request, membership):
    """Every session of the tenant, newest first, a page at a time: who, which workspace, when, why it ended, egress
    (owners and admins; members see their own workspaces' state on the workspaces page)."""
    if not policy.can_see_activity(membership):
        return render(request, "workspaces/sessions.html", {"refused": policy.MANAGERS_ONLY}, status=403)
    form = ActivityForm(request.GET)
    page = None
    if form.is_valid():
        page = activity_page(form, selectors.session_list(tenant=membership.tenant, membership=membership))
    now = timezone.now()
    for session in page or ():
        session.duration = _duration((session.ended_at or now) - session.started_at)
    return render(request, "workspaces/sessions.html", {"form": form, "page": page},
                  status=200 if page is not None else 400)


def _duration(elapsed):
    seconds = max(0, int(elapsed.total_seconds()))
    if seconds < 60:
        return f"{seconds} s"
    minutes = seconds // 60
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def _fail(request, exc):
    messages.error(request, exc.message)
    return redirect("workspaces:list")


@require_POST
@tenant_view
def workspace_create(request, membership):
    try:
        workspace = services.workspace_create(tenant=membership.tenant, owner=request.user, actor=request.user,
                                              name=request.POST.get("name", ""), template=request.POST.get("template"))
    except ServiceError as exc:
        return _fail(request, exc)
    messages.success(request, f"Workspace '{workspace.name}' created.")
    return redirect("workspaces:list")


@require_POST
@tenant_view
def workspace_open(request, membership, pk):
    try:
        workspace = selectors.workspace_get(tenant=membership.tenant, membership=membership, workspace_id=pk)
        opened = services.workspace_open(workspace=workspace, user=request.user,
                                         start_later=settings.WORKSPACES_COLD_OPEN_ASYNC)
    except ServiceError as exc:
        return _fail(request, exc)
    return redirect(opened.url)


@require_POST
@tenant_view
def session_close(request, membership, pk):
    try:
        session = selectors.session_get(tenant=membership.tenant, membership=membership, session_id=pk)
        services.session_close(session=session, actor=request.user)
    except ServiceError as exc:
        return _fail(request, exc)
    messages.success(request, "Session closed.")
    return redirect("workspaces:list")


@require_POST
@tenant_view
def workspace_delete(request, membership, pk):
    try:
        workspace = selectors.workspace_get(tenant=membership.tenant, membership=membership, workspace_id=pk)
        services.workspace_delete(workspace=workspace, actor=request.user, confirm=request.POST.get("confirm"))
    except ServiceError as exc:
        return _fail(request, exc)
    messages.success(request, f"Workspace '{workspace.name}' and its files were deleted.")
    return redirect("workspaces:list")


@dashboard_card("workspaces")
def workspaces_card(request, membership):
    workspaces = selectors.workspace_list(tenant=membership.tenant, membership=membership)
    sessions = selectors.session_list(tenant=membership.tenant, membership=membership).filter(ended_at__isnull=True)
    return {"workspaces": workspaces.count(), "open": sessions.count(),
            "ready": sum(t.warm for t in selectors.template_list())}
