"""The portal's current tenant, chosen per browser session among the user's memberships."""
from tenants.portal import current_membership


def current_tenant(request):
    membership = current_membership(request) if getattr(request, "user", None) else None
    return {"membership": membership, "tenant": membership.tenant if membership else None}
