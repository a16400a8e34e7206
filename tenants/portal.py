"""Which tenant a portal page acts on (chosen per browser session), the pending invitation, and dashboard cards."""
import functools
from datetime import datetime

from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import Http404
from django.shortcuts import redirect

from core.context import context_set
from tenants.exceptions import NotFound
from tenants.selectors import memberships_of

SESSION_KEY = "hearth_tenant"
# An invitation token opened while signed out: accepted right after the next sign-in or email confirmation.
INVITATION_SESSION_KEY = "hearth_invitation"
# {"tenant": pk, "at": ISO time}: this session signed in through that tenant's identity provider (the sso app).
SSO_LOGIN_SESSION_KEY = "hearth_sso_login"


def user_memberships(request):
    if not request.user.is_authenticated:
        return []
    cached = getattr(request, "_hearth_memberships", None)
    if cached is None:
        cached = request._hearth_memberships = list(memberships_of(user=request.user))
    return cached


def current_membership(request):
    if not request.user.is_authenticated:
        return None
    cached = getattr(request, "_hearth_membership", None)
    if cached is not None:
        return cached
    memberships = user_memberships(request)
    chosen = request.session.get(SESSION_KEY)
    membership = next((m for m in memberships if m.tenant.slug == chosen), memberships[0] if memberships else None)
    request._hearth_membership = membership
    # The page's tenant and user, for its spans and log lines (core.context).
    context_set(tenant_id=membership.tenant_id if membership else None, user_id=request.user.pk)
    return membership


def sso_login_remember(request, *, tenant, at):
    """Called right after an SSO sign-in (after auth.login, which cycles the session)."""
    request.session[SSO_LOGIN_SESSION_KEY] = {"tenant": tenant.pk, "at": at.isoformat()}


def sso_login_at(request, tenant):
    """When this session signed in through `tenant`'s identity provider, or None (a password, or another tenant's)."""
    recorded = request.session.get(SSO_LOGIN_SESSION_KEY) or {}
    if recorded.get("tenant") != tenant.pk:
        return None
    return datetime.fromisoformat(recorded["at"])


def portal_session_check(request):
    """A portal session acts only in tenants its user belongs to; checked on every browser request
    (tenants.middleware) from the memberships the page loads anyway. A session that signed in through a tenant's
    identity provider is signed out once the user has left that tenant (removed, or deactivated by its directory
    over SCIM: the IdP's word was its credential); a chosen tenant the user has left is forgotten. Returns False
    when it signed the session out."""
    signed_in_through = (request.session.get(SSO_LOGIN_SESSION_KEY) or {}).get("tenant")
    chosen = request.session.get(SESSION_KEY)
    if (signed_in_through is None and chosen is None) or not request.user.is_authenticated:
        return True  # nothing to check: no query
    memberships = user_memberships(request)
    if signed_in_through is not None and signed_in_through not in {m.tenant_id for m in memberships}:
        logout(request)
        return False
    if chosen is not None and chosen not in {m.tenant.slug for m in memberships}:
        del request.session[SESSION_KEY]
        request._hearth_membership = None
    return True


def choose_tenant(request, slug):
    request.session[SESSION_KEY] = slug
    request._hearth_membership = None
    request._hearth_memberships = None


def tenant_view(view):
    """A portal view `fn(request, membership, ...)` acting on the current tenant: signed in and a member of
    some tenant (else sent to create one); a NotFound from a selector or service is a 404."""

    @login_required
    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        membership = current_membership(request)
        if membership is None:
            return redirect("portal:tenant_create")
        try:
            return view(request, membership, *args, **kwargs)
        except NotFound as exc:
            raise Http404(exc.message) from None

    return wrapped


# --- dashboard cards -----------------------------------------------------------------------------
# Later apps (workspaces, metering, billing) fill the dashboard's cards without tenants importing them:
# each registers, from its AppConfig.ready(), a function giving the context of one card.

DASHBOARD_CARDS = ("workspaces", "usage", "billing")
_card_providers = {}


def dashboard_card(name):
    """@dashboard_card("usage"): fn(request, membership) -> dict, given to portal/cards/<name>.html as `card`."""
    if name not in DASHBOARD_CARDS:
        raise ValueError(f"Unknown dashboard card '{name}'. Cards: {', '.join(DASHBOARD_CARDS)}.")

    def register(fn):
        _card_providers[name] = fn
        return fn

    return register


def dashboard_cards(request, membership):
    """[(name, template, context)] in display order; a card without a provider shows its placeholder."""
    cards = []
    for name in DASHBOARD_CARDS:
        provider = _card_providers.get(name)
        context = provider(request, membership) if provider else None
        cards.append({"name": name, "template": f"portal/cards/{name}.html", "context": context})
    return cards


# --- the activity pages (sessions, audit trail): owners and admins, a page at a time ------------------------------

ACTIVITY_PAGE_SIZE = 50


def activity_page(form, rows):
    """The page of `rows` the valid ActivityForm `form` asks for, or None with the form's error (a page past the
    last). Refusing members is the views' (tenants.policy.can_see_activity)."""
    paginator = Paginator(rows, ACTIVITY_PAGE_SIZE)
    number = form.cleaned_data.get("page") or 1
    if number > paginator.num_pages:
        form.add_error("page", f"There {'is' if paginator.num_pages == 1 else 'are'} only {paginator.num_pages} "
                               f"page{'s' if paginator.num_pages != 1 else ''}.")
        return None
    return paginator.page(number)
