"""The portal's payment banner: a failed payment's grace period, then the suspension for payment."""
from tenants import policy
from tenants.portal import current_membership


def billing_banner(request):
    membership = current_membership(request) if getattr(request, "user", None) else None
    tenant = membership.tenant if membership else None
    if tenant is None or tenant.payment_due_by is None:
        return {"billing_banner": None}
    payer = "Pay" if policy.can_see_billing(membership) else "An owner can pay"
    if policy.is_payment_overdue(tenant):
        return {"billing_banner": {
            "level": "danger",
            "message": f"{tenant.name}'s payment is overdue: workspaces cannot be opened until it is paid. Your data "
                       f"is kept. {payer} on the Billing page."}}
    return {"billing_banner": {
        "level": "warning",
        "message": f"A payment for {tenant.name} failed. Workspaces keep opening until "
                   f"{tenant.payment_due_by:%Y-%m-%d %H:%M} UTC; then they stop until it is paid. {payer} on the "
                   f"Billing page."}}
