"""Just-in-time provisioning: an identity provider's claims after a verified sign-in become a Hearth user and a
membership of the provider's tenant with the mapped role (first sign-in), or update them (later ones)."""
from allauth.account.models import EmailAddress
from django.contrib.auth import get_user_model
from django.db import transaction
from django.utils import timezone

from sso.models import DEFAULT_CLAIMS, ScimUser, SsoIdentity
from sso.selectors import email_domain, verified_domains
from tenants import policy
from tenants.audit import audit_record
from tenants.events import event_emit
from tenants.exceptions import Conflict, Forbidden
from tenants.models import Invitation, Membership, Role, Tenant

User = get_user_model()
# A user in several mapped groups gets the strongest of their roles.
_ROLE_RANK = {Role.MEMBER: 0, Role.ADMIN: 1}


def claims_read(identity_provider, claims):
    """Hearth's names for the values in `claims`, through the provider's claim mapping."""
    mapping = {**DEFAULT_CLAIMS, **(identity_provider.claim_mapping or {})}
    groups = claims.get(mapping["groups"]) or []
    verified = claims.get(mapping["email_verified"])
    return {
        "email": str(claims.get(mapping["email"]) or "").strip().lower(),
        "email_verified": verified is True or str(verified).lower() == "true",
        "name": str(claims.get(mapping["name"]) or "").strip(),
        "given_name": str(claims.get(mapping["given_name"]) or "").strip(),
        "family_name": str(claims.get(mapping["family_name"]) or "").strip(),
        "groups": [groups] if isinstance(groups, str) else [str(g) for g in groups],
    }


def role_for(identity_provider, groups):
    mapped = [identity_provider.group_roles[g] for g in groups if g in (identity_provider.group_roles or {})]
    return max(mapped, key=_ROLE_RANK.get) if mapped else identity_provider.default_role


def _names(values):
    given, family = values["given_name"], values["family_name"]
    if not (given or family) and values["name"]:
        given, _, family = values["name"].partition(" ")
    return given[:150], family[:150]


def sso_login_provision(*, identity_provider, subject, claims):
    """The membership of the user the claims describe in the provider's tenant, created or brought up to date.

    Refused (Forbidden): no address, one the IdP has not verified, or one outside the provider's verified domains
    (so tenant A's IdP can never sign in an address of tenant B); a deactivated user, or one the tenant's directory
    deactivated over SCIM. Conflict(seat_limit) when the tenant's plan has no free seat for a new member. The user's
    other memberships are left as they are.
    """
    values = claims_read(identity_provider, claims)
    email, tenant = values["email"], identity_provider.tenant
    if "@" not in email:
        raise Forbidden("The identity provider did not send an email address.", code="sso_no_email")
    if not values["email_verified"]:
        raise Forbidden(f"The identity provider has not verified {email}: verify it there first.",
                        code="sso_email_unverified")
    if email_domain(email) not in verified_domains(identity_provider):
        raise Forbidden(f"{email} is not an address of {tenant.name}'s verified domains: this identity provider "
                        f"cannot sign it in.", code="sso_domain_mismatch")
    role = role_for(identity_provider, values["groups"])
    now = timezone.now()
    with transaction.atomic():
        # The tenant's row serialises seat counting, as member_invite and invitation_accept do.
        tenant = Tenant.objects.select_related("plan").select_for_update(of=("self",)).get(pk=tenant.pk)
        policy.require_not_offboarded(tenant)
        policy.sso_check(tenant)
        identity = (SsoIdentity.objects.select_for_update().select_related("user")
                    .filter(identity_provider=identity_provider, subject=subject).first())
        user = identity.user if identity else User.objects.filter(email__iexact=email).first()
        if identity is not None and user.email.lower() != email:
            raise Forbidden(f"Your account at the identity provider is linked to {user.email}, not {email}: ask "
                            f"Hearth's support to move it.", code="sso_identity_conflict")
        if user is None:
            user = User.objects.create_user(email=email)  # no password: this user signs in through the IdP
        if not user.is_active:
            raise Forbidden(f"The Hearth account {email} is deactivated.", code="account_inactive")
        if ScimUser.objects.filter(identity_provider__tenant=tenant, user=user, active=False).exists():
            # A sign-in must not bring back a member the directory deactivated (sso.scim).
            raise Forbidden(f"{tenant.name}'s directory has deactivated {email}: ask its administrator.",
                            code="scim_deactivated")
        given, family = _names(values)
        if (given or family) and (user.first_name, user.last_name) != (given, family):
            user.first_name, user.last_name = given, family
            user.save(update_fields=["first_name", "last_name"])
        membership = membership_provision(tenant=tenant, user=user, role=role, provider=identity_provider)
        if identity is None:
            SsoIdentity.objects.create(identity_provider=identity_provider, subject=subject, user=user,
                                       last_login_at=now)
        else:
            SsoIdentity.objects.filter(pk=identity.pk).update(last_login_at=now)
        email_verified_record(user, email)
    return membership


def membership_provision(*, tenant, user, role, provider):
    """The user's membership of `tenant` with `role` (an owner keeps theirs), created within the plan's seats or
    brought up to date, with its audit row; in the caller's transaction, the tenant's row locked. Also SCIM's."""
    membership = Membership.objects.filter(tenant=tenant, user=user).first()
    if membership is None:
        # The user's own pending invitation is the seat they are taking now.
        pending = Invitation.objects.filter(tenant=tenant, accepted_at__isnull=True, revoked_at__isnull=True,
                                            expires_at__gt=timezone.now()).exclude(email__iexact=user.email).count()
        try:
            policy.seats_check(tenant=tenant, used=tenant.memberships.count() + pending)
        except Conflict:
            raise Conflict(f"{tenant.name} has no free seat on its {tenant.plan.name} plan, so your first sign-in "
                           f"cannot add you. Ask an owner of {tenant.name} to free a seat or upgrade the plan.",
                           code="seat_limit") from None
        membership = Membership.objects.create(tenant=tenant, user=user, role=role)
        audit_record(tenant=tenant, actor=user, action="member.joined", target=user.email,
                     data={"role": role, "identity_provider": provider.pk})
        event_emit(type="member.joined", tenant=tenant, payload={"email": user.email, "role": role})
    elif membership.role != role and membership.role != Role.OWNER:
        old, membership.role = membership.role, role
        membership.save(update_fields=["role"])
        audit_record(tenant=tenant, actor="sso", action="member.role_changed", target=user.email,
                     data={"from": old, "to": role, "identity_provider": provider.pk})
    return membership


def email_verified_record(user, email):
    """allauth's record of the address, verified: the IdP vouched for it."""
    address = EmailAddress.objects.filter(user=user, email__iexact=email).first()
    if address is None:
        EmailAddress.objects.create(user=user, email=email, verified=True,
                                    primary=not EmailAddress.objects.filter(user=user, primary=True).exists())
    elif not address.verified:
        EmailAddress.objects.filter(pk=address.pk).update(verified=True)
