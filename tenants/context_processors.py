"""The portal's current tenant, chosen per browser session among the user's memberships, what the user may do in it
(tenants.policy's answers, for the templates), and the pending invitation."""
import functools

from tenants import policy
from tenants.accounts import pending_invitation
from tenants.portal import current_membership, user_memberships


def current_tenant(request):
    if not getattr(request, "user", None):
        return {"membership": None, "tenant": None, "memberships": []}
    membership = current_membership(request)
    return {
        "membership": membership,
        "tenant": membership.tenant if membership else None,
        "memberships": user_memberships(request),
        "can_manage_members": policy.can_manage_members(membership),
        "can_change_plan": policy.can_change_plan(membership),
        "can_see_activity": policy.can_see_activity(membership),
        "can_configure_sso": policy.can_configure_sso(membership),
        # Looked up only by the pages that show it (sign-up, sign-in, verification sent).
        "pending_invitation": functools.cache(lambda: pending_invitation(request)),
    }
