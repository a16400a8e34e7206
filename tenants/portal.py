"""Which tenant a portal page acts on: the one chosen in the session, else the user's first."""
from tenants.selectors import memberships_of

SESSION_KEY = "hearth_tenant"


def current_membership(request):
    if not request.user.is_authenticated:
        return None
    cached = getattr(request, "_hearth_membership", None)
    if cached is not None:
        return cached
    memberships = list(memberships_of(user=request.user))
    chosen = request.session.get(SESSION_KEY)
    membership = next((m for m in memberships if m.tenant.slug == chosen), memberships[0] if memberships else None)
    request._hearth_membership = membership
    return membership


def choose_tenant(request, slug):
    request.session[SESSION_KEY] = slug
    request._hearth_membership = None
