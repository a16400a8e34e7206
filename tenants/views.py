"""Portal views of the tenants app: dashboard, members and invitations, plans, API tokens, exports, settings.

Every write goes through tenants.services; a ServiceError becomes a message on the page with its 4xx status.
Objects are looked up within the current tenant, so another tenant's look exactly like missing ones (404).
"""
import json
from pathlib import Path

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import FileResponse, Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_http_methods, require_POST

from tenants import policy, selectors, services
from tenants.exceptions import NotFound, ServiceError
from tenants.forms import (
    ActivityForm,
    ApiTokenForm,
    InviteForm,
    PlanChangeForm,
    RoleForm,
    TenantCreateForm,
    TenantSettingsForm,
    TenantSwitchForm,
    add_service_error,
)
from tenants.models import Role
from tenants.portal import (
    INVITATION_SESSION_KEY,
    activity_page,
    choose_tenant,
    current_membership,
    dashboard_cards,
    sso_login_at,
    tenant_view,
    user_memberships,
)


def _error_status(exc):
    return exc.status_code if 400 <= exc.status_code < 500 else 400


# --- dashboard and tenant choice -----------------------------------------------------------------


@tenant_view
def dashboard(request, membership):
    tenant = membership.tenant
    context = {
        "plan": tenant.plan,
        "member_count": selectors.member_list(tenant=tenant).count(),
        "pending_count": selectors.invitation_list(tenant=tenant).count(),
        "seats_used": services.seats_used(tenant),
        "cards": dashboard_cards(request, membership),
    }
    return render(request, "portal/dashboard.html", context)


@login_required
@require_POST
def tenant_switch(request):
    form = TenantSwitchForm(request.POST)
    slug = form.cleaned_data["tenant"] if form.is_valid() else None
    if not any(m.tenant.slug == slug for m in user_memberships(request)):
        raise Http404("No such tenant.")
    choose_tenant(request, slug)
    target = request.POST.get("next") or ""
    if not url_has_allowed_host_and_scheme(target, allowed_hosts={request.get_host()},
                                           require_https=request.is_secure()):
        target = reverse("portal:dashboard")
    return redirect(target)


@login_required
@require_http_methods(["GET", "POST"])
def tenant_create(request):
    status = 200
    form = TenantCreateForm(request.POST or None)
    if request.method == "POST":
        if form.is_valid():
            try:
                # A paid plan starts only when it is paid: the organisation starts on Free and goes to checkout.
                tenant = services.tenant_onboard(name=form.cleaned_data["name"], owner=request.user, plan="free")
            except ServiceError as exc:
                add_service_error(form, exc)
                status = _error_status(exc)
            else:
                choose_tenant(request, tenant.slug)
                messages.success(request, f"{tenant.name} is ready.")
                chosen = form.cleaned_data["plan"]
                if chosen.slug != tenant.plan.slug:
                    try:
                        result = services.tenant_request_plan(tenant=tenant, plan=chosen, actor=request.user,
                                                              return_url=request.build_absolute_uri("/billing/"))
                    except ServiceError as exc:
                        messages.error(request, exc.message)
                    else:
                        return _plan_request_redirect(request, result)
                return redirect("portal:dashboard")
        else:
            status = 400
    return render(request, "portal/tenant_create.html",
                  {"form": form, "exports": selectors.export_list(user=request.user)}, status=status)


# --- members and invitations ---------------------------------------------------------------------


def _members_page(request, membership, *, invite_form=None, status=200, invitation_link=None):
    tenant = membership.tenant
    members = list(selectors.member_list(tenant=tenant))
    context = {
        "members": members,
        "invitations": selectors.invitation_list(tenant=tenant),
        "invite_form": invite_form or InviteForm(),
        "roles": Role.choices,
        "can_leave": not policy.is_last_owner(membership, owners=sum(policy.is_owner(m) for m in members)),
        "seats_used": services.seats_used(tenant),
        "invitation_link": invitation_link,
        "now": timezone.now(),
    }
    return render(request, "portal/members.html", context, status=status)


def _service_failed(request, membership, exc):
    messages.error(request, exc.message)
    return _members_page(request, membership, status=_error_status(exc))


@tenant_view
@require_http_methods(["GET", "POST"])
def members(request, membership):
    """The member list; a POST invites someone (owners and admins)."""
    if request.method == "GET":
        return _members_page(request, membership)
    form = InviteForm(request.POST)
    if not form.is_valid():
        return _members_page(request, membership, invite_form=form, status=400)
    try:
        invitation, token = services.member_invite(tenant=membership.tenant, email=form.cleaned_data["email"],
                                                   role=form.cleaned_data["role"], actor=request.user)
    except ServiceError as exc:
        if exc.status_code == 404:
            raise Http404(exc.message) from None
        if policy.can_manage_members(membership):
            add_service_error(form, exc)
        else:  # the invite form is not on their page
            messages.error(request, exc.message)
        return _members_page(request, membership, invite_form=form, status=_error_status(exc))
    link = services.invitation_url(token, base_url=request.build_absolute_uri("/"))
    if services.invitation_send_mail(invitation=invitation, token=token, base_url=request.build_absolute_uri("/")):
        messages.success(request, f"Invitation sent to {invitation.email}.")
    else:
        messages.warning(request, f"The invitation for {invitation.email} is ready, but the mail could not be "
                                  f"sent: pass on the link below.")
    # The token is shown this once (it is stored hashed), so the page is rendered rather than redirected to.
    return _members_page(request, membership, invitation_link=link, status=201)


@tenant_view
@require_POST
def member_role(request, membership, member_id):
    target = selectors.member_get(tenant=membership.tenant, membership_id=member_id)
    form = RoleForm(request.POST)
    if not form.is_valid():
        messages.error(request, "Choose one of the roles: owner, admin or member.")
        return _members_page(request, membership, status=400)
    try:
        updated = services.member_set_role(membership=target, role=form.cleaned_data["role"], actor=request.user)
    except ServiceError as exc:
        return _service_failed(request, membership, exc)
    messages.success(request, f"{updated.user.email} is now {updated.get_role_display().lower()}.")
    return redirect("portal:members")


@tenant_view
@require_POST
def member_remove(request, membership, member_id):
    target = selectors.member_get(tenant=membership.tenant, membership_id=member_id)
    leaving = target.user_id == request.user.pk
    try:
        services.member_remove(membership=target, actor=request.user)
    except ServiceError as exc:
        return _service_failed(request, membership, exc)
    if leaving:
        choose_tenant(request, None)
        messages.success(request, f"You left {membership.tenant.name}.")
        return redirect("portal:dashboard")
    messages.success(request, f"{target.user.email} was removed from {membership.tenant.name}.")
    return redirect("portal:members")


@tenant_view
@require_POST
def invitation_revoke(request, membership, invitation_id):
    invitation = selectors.invitation_get(tenant=membership.tenant, invitation_id=invitation_id)
    try:
        services.invitation_revoke(invitation=invitation, actor=request.user)
    except ServiceError as exc:
        return _service_failed(request, membership, exc)
    messages.success(request, f"The invitation for {invitation.email} was revoked.")
    return redirect("portal:members")


INVITATION_PROBLEMS = {
    "accepted": "This invitation has already been used.",
    "revoked": "This invitation was revoked.",
    "expired": "This invitation has expired; ask for a new one.",
}


@require_http_methods(["GET", "POST"])
def invitation(request, token):
    """Open an invitation link: signed in, accept it; signed out, sign up or sign in and it is accepted then."""
    try:
        invitation = services.invitation_by_token(token)
    except NotFound as exc:
        return render(request, "portal/invitation.html", {"error": exc.message}, status=404)
    state = selectors.invitation_state(invitation)
    context = {"invitation": invitation, "token": token, "state": state}
    if state != "pending":
        request.session.pop(INVITATION_SESSION_KEY, None)
        return render(request, "portal/invitation.html", {**context, "error": INVITATION_PROBLEMS[state]},
                      status=409)
    if not request.user.is_authenticated:
        if request.method == "POST":
            return redirect(f"{reverse('account_login')}?next={request.path}")
        request.session[INVITATION_SESSION_KEY] = token
        return render(request, "portal/invitation.html", context)
    if request.user.email.lower() != invitation.email.lower():
        error = f"This invitation is for {invitation.email}; you are signed in as {request.user.email}."
        return render(request, "portal/invitation.html", {**context, "error": error, "other_email": True},
                      status=403)
    if request.method == "GET":
        return render(request, "portal/invitation.html", context)
    try:
        joined = services.invitation_accept(token=token, user=request.user)
    except ServiceError as exc:
        return render(request, "portal/invitation.html", {**context, "error": exc.message},
                      status=_error_status(exc))
    request.session.pop(INVITATION_SESSION_KEY, None)
    choose_tenant(request, joined.tenant.slug)
    messages.success(request, f"You joined {joined.tenant.name} as {joined.get_role_display().lower()}.")
    return redirect("portal:dashboard")


# --- plans ---------------------------------------------------------------------------------------


@require_http_methods(["GET", "POST"])
def plans(request):
    """The public plans; owners switch their tenant's plan here. Anyone may look."""
    membership = current_membership(request)
    status = 200
    if request.method == "POST":
        if membership is None:
            return redirect(f"{reverse('account_login')}?next={request.path}")
        form = PlanChangeForm(request.POST)
        if not form.is_valid():
            messages.error(request, "Choose a plan.")
            status = 400
        else:
            try:
                result = services.tenant_request_plan(tenant=membership.tenant, plan=form.cleaned_data["plan"],
                                                      actor=request.user,
                                                      return_url=request.build_absolute_uri("/billing/"))
            except ServiceError as exc:
                messages.error(request, exc.message)
                status = _error_status(exc)
            else:
                return _plan_request_redirect(request, result)
    plans = list(selectors.plan_list())
    if membership is not None and membership.tenant.plan not in plans:
        plans.insert(0, membership.tenant.plan)  # a custom plan staff gave this tenant
    context = {"plans": plans}
    return render(request, "portal/plans.html", context, status=status)


def _plan_request_redirect(request, result):
    """Where an owner goes after choosing a plan: Stripe Checkout to pay for it, else back with what happened."""
    if result.checkout_url:
        return redirect(result.checkout_url)
    tenant = result.tenant
    if result.outcome == "scheduled" and tenant.pending_plan is not None:
        when = f" on {tenant.current_period_end:%Y-%m-%d}" if tenant.current_period_end else ""
        messages.success(request, f"{tenant.name} moves to the {tenant.pending_plan.name} plan at the end of the "
                                  f"billing period{when}.")
    else:
        messages.success(request, f"{tenant.name} is on the {tenant.plan.name} plan.")
    return redirect("portal:plans")


# --- API tokens ----------------------------------------------------------------------------------


@tenant_view
@require_http_methods(["GET", "POST"])
def api_tokens(request, membership):
    status, created = 200, None
    form = ApiTokenForm(request.POST or None)
    if request.method == "POST":
        if not form.is_valid():
            status = 400
        else:
            try:
                token, plaintext = services.api_token_create(
                    membership=membership, name=form.cleaned_data["name"], actor=request.user,
                    sso_login_at=sso_login_at(request, membership.tenant))
            except ServiceError as exc:
                add_service_error(form, exc)
                status = _error_status(exc)
            else:
                created = {"token": token, "plaintext": plaintext}
                form, status = ApiTokenForm(), 201
    context = {"form": form, "tokens": selectors.api_token_list(tenant=membership.tenant, user=request.user),
               "created": created}
    return render(request, "portal/api_tokens.html", context, status=status)


@tenant_view
@require_POST
def api_token_revoke(request, membership, token_id):
    token = selectors.api_token_get(tenant=membership.tenant, token_id=token_id)
    try:
        services.api_token_revoke(token=token, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
        context = {"form": ApiTokenForm(), "created": None,
                   "tokens": selectors.api_token_list(tenant=membership.tenant, user=request.user)}
        return render(request, "portal/api_tokens.html", context, status=_error_status(exc))
    messages.success(request, f"The token “{token.name}” was revoked; it no longer works.")
    return redirect("portal:api_tokens")


# --- offboarding exports -------------------------------------------------------------------------


@login_required
def exports(request):
    return render(request, "portal/exports.html", {"exports": selectors.export_list(user=request.user)})


@login_required
def export_download(request, export_id):
    try:
        export = selectors.export_get(user=request.user, export_id=export_id)
    except NotFound as exc:
        raise Http404(exc.message) from None
    path = Path(export.path)
    if not path.is_file():
        raise Http404("The archive file is missing; ask support.")
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name,
                        content_type="application/gzip")


# --- tenant settings -----------------------------------------------------------------------------


@tenant_view
@require_http_methods(["GET", "POST"])
def tenant_settings(request, membership):
    status = 200
    form = TenantSettingsForm(request.POST or None, initial={"name": membership.tenant.name})
    if request.method == "POST":
        if not form.is_valid():
            status = 400
        else:
            try:
                tenant = services.tenant_rename(tenant=membership.tenant, name=form.cleaned_data["name"],
                                                actor=request.user)
            except ServiceError as exc:
                add_service_error(form, exc)
                status = _error_status(exc)
            else:
                messages.success(request, f"The organisation is now called {tenant.name}.")
                return redirect("portal:tenant_settings")
    context = {"form": form}
    return render(request, "portal/tenant_settings.html", context, status=status)


@tenant_view
def audit_log(request, membership):
    """The tenant's audit trail, newest first, a page at a time, filtered by action: owners and admins."""
    tenant = membership.tenant
    if not policy.can_see_activity(membership):
        return render(request, "portal/audit_log.html", {"refused": policy.MANAGERS_ONLY}, status=403)
    form = ActivityForm(request.GET, actions=selectors.audit_actions(tenant=tenant))
    page = None
    if form.is_valid():
        page = activity_page(form, selectors.audit_log_list(tenant=tenant, action=form.cleaned_data["action"]))
    for row in page or ():
        row.details = json.dumps(row.data, sort_keys=True) if row.data else ""
    query = {"action": form.cleaned_data.get("action", "")} if form.is_valid() else {}
    return render(request, "portal/audit_log.html", {"form": form, "page": page, "query": query},
                  status=200 if page is not None else 400)
