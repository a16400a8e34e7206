"""The owners' portal pages of single sign-on (/sso/settings/): the tenant's identity providers, their domains with
the DNS TXT record to publish and a check now, enforcement and roles. Every write is sso.services', as the API's."""
import functools

from django.contrib import messages
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from sso import selectors, services
from sso.forms import IdentityProviderForm, redirect_uri
from sso.models import IdentityProvider
from tenants import policy
from tenants.exceptions import Forbidden, NotFound, ServiceError
from tenants.forms import add_service_error
from tenants.portal import tenant_view


def owners_page(view):
    """A portal page of the current tenant for those who configure its single sign-on (tenants.policy: owners);
    others get a 403 page saying so. Another tenant's identity provider is not found (404, by tenant_view)."""

    @tenant_view
    @functools.wraps(view)
    def wrapped(request, membership, *args, **kwargs):
        if not policy.can_configure_sso(membership):
            error = Forbidden(policy.OWNERS_ONLY)
            return render(request, "sso/settings_refused.html", {"error": error}, status=error.status_code)
        return view(request, membership, *args, **kwargs)

    return wrapped


def _plan_refusal(tenant):
    """The upgrade notice's error when the plan has no SSO, else None."""
    try:
        policy.sso_check(tenant)
    except ServiceError as exc:
        return exc
    return None


def _settings_page(request, membership, *, status=200):
    tenant = membership.tenant
    context = {"providers": selectors.identity_provider_list(tenant=tenant), "plan_refusal": _plan_refusal(tenant),
               "enforced": policy.is_sso_enforced(tenant), "redirect_uri": redirect_uri(),
               "kinds": IdentityProvider.Kind.choices}
    return render(request, "sso/settings.html", context, status=status)


@owners_page
def settings_page(request, membership):
    return _settings_page(request, membership)


def _form_page(request, membership, form, *, status=200):
    context = {"form": form, "kind": form.kind, "provider": form.identity_provider,
               "kind_label": IdentityProvider.Kind(form.kind).label,
               "plan_refusal": _plan_refusal(membership.tenant)}
    return render(request, "sso/provider_form.html", context, status=status)


@owners_page
@require_http_methods(["GET", "POST"])
def provider_create(request, membership, kind):
    if kind not in IdentityProvider.Kind.values:
        raise NotFound(f"Unknown kind '{kind}'. Kinds: {', '.join(IdentityProvider.Kind.values)}.")
    form = IdentityProviderForm(request.POST or None, kind=kind)
    if request.method == "GET" or not form.is_valid():
        return _form_page(request, membership, form, status=200 if request.method == "GET" else 400)
    try:
        provider = services.identity_provider_create(tenant=membership.tenant, actor=request.user, kind=kind,
                                                     **form.changes())
    except ServiceError as exc:
        add_service_error(form, exc)
        return _form_page(request, membership, form, status=exc.status_code)
    messages.success(request, "The identity provider was added. Publish the DNS TXT record of each domain, then "
                              "verify it.")
    return redirect(f"{_settings_url()}#idp-{provider.pk}")


@owners_page
@require_http_methods(["GET", "POST"])
def provider_edit(request, membership, identity_provider_id):
    provider = selectors.identity_provider_get(tenant=membership.tenant, identity_provider_id=identity_provider_id)
    form = IdentityProviderForm(request.POST or None, kind=provider.kind, identity_provider=provider)
    if request.method == "GET" or not form.is_valid():
        return _form_page(request, membership, form, status=200 if request.method == "GET" else 400)
    try:
        services.identity_provider_update(identity_provider=provider, actor=request.user, **form.changes())
    except ServiceError as exc:
        add_service_error(form, exc)
        return _form_page(request, membership, form, status=exc.status_code)
    messages.success(request, "The identity provider was saved.")
    return redirect(f"{_settings_url()}#idp-{provider.pk}")


@owners_page
@require_POST
def provider_delete(request, membership, identity_provider_id):
    provider = selectors.identity_provider_get(tenant=membership.tenant, identity_provider_id=identity_provider_id)
    try:
        services.identity_provider_delete(identity_provider=provider, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _settings_page(request, membership, status=exc.status_code)
    messages.success(request, "The identity provider was deleted; its domains no longer sign in through it.")
    return redirect("sso:settings")


@owners_page
@require_POST
def domains_verify(request, membership, identity_provider_id):
    provider = selectors.identity_provider_get(tenant=membership.tenant, identity_provider_id=identity_provider_id)
    try:
        domains = services.domains_verify_dns(identity_provider=provider, actor=request.user)
    except ServiceError as exc:
        messages.error(request, exc.message)
        return _settings_page(request, membership, status=exc.status_code)
    waiting = [row.domain for row in domains if row.verified_at is None]
    if waiting:
        messages.warning(request, f"No matching TXT record found yet for {', '.join(waiting)}. DNS changes can take "
                                  f"a while to show; try again later.")
    else:
        messages.success(request, "Every domain is verified.")
    return redirect(f"{_settings_url()}#idp-{provider.pk}")


def _settings_url():
    return reverse("sso:settings")
