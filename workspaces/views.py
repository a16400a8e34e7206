"""Portal pages of the workspaces app: list, create, open (in a new tab), close, delete."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import redirect, render
from django.template.loader import select_template
from django.views.decorators.http import require_POST

from tenants.exceptions import ServiceError
from tenants.portal import current_membership
from workspaces import selectors, services


def _membership_or_404(request):
    membership = current_membership(request)
    if membership is None:
        raise Http404("You are not a member of any tenant.")
    return membership


@login_required
def workspace_list(request):
    membership = _membership_or_404(request)
    workspaces = list(selectors.workspace_list(tenant=membership.tenant, membership=membership))
    live = {s.workspace_id: s for s in selectors.session_list(tenant=membership.tenant, membership=membership)
            .filter(ended_at__isnull=True)}
    for workspace in workspaces:
        workspace.live_session = live.get(workspace.pk)
    return render(request, "workspaces/list.html", {
        "base_template": select_template(["portal/base.html", "workspaces/base_fallback.html"]),
        "membership": membership,
        "workspaces": workspaces,
        "templates": selectors.template_list(),
    })


def _fail(request, exc):
    messages.error(request, exc.message)
    return redirect("workspaces:list")


@login_required
@require_POST
def workspace_create(request):
    membership = _membership_or_404(request)
    try:
        workspace = services.workspace_create(tenant=membership.tenant, owner=request.user, actor=request.user,
                                              name=request.POST.get("name", ""), template=request.POST.get("template"))
    except ServiceError as exc:
        return _fail(request, exc)
    messages.success(request, f"Workspace '{workspace.name}' created.")
    return redirect("workspaces:list")


@login_required
@require_POST
def workspace_open(request, pk):
    membership = _membership_or_404(request)
    try:
        workspace = selectors.workspace_get(tenant=membership.tenant, membership=membership, workspace_id=pk)
        opened = services.workspace_open(workspace=workspace, user=request.user)
    except ServiceError as exc:
        return _fail(request, exc)
    return redirect(opened.url)


@login_required
@require_POST
def session_close(request, pk):
    membership = _membership_or_404(request)
    try:
        session = selectors.session_get(tenant=membership.tenant, membership=membership, session_id=pk)
        services.session_close(session=session, actor=request.user)
    except ServiceError as exc:
        return _fail(request, exc)
    messages.success(request, "Session closed.")
    return redirect("workspaces:list")


@login_required
@require_POST
def workspace_delete(request, pk):
    membership = _membership_or_404(request)
    try:
        workspace = selectors.workspace_get(tenant=membership.tenant, membership=membership, workspace_id=pk)
        services.workspace_delete(workspace=workspace, actor=request.user, confirm=request.POST.get("confirm"))
    except ServiceError as exc:
        return _fail(request, exc)
    messages.success(request, f"Workspace '{workspace.name}' and its files were deleted.")
    return redirect("workspaces:list")
