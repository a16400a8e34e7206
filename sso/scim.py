"""Writes of SCIM 2.0 provisioning: the identity provider's SCIM token (owners and staff create, rotate and revoke
it), and what its directory does with it: users provisioned, changed, deactivated and deleted (a membership of the
tenant, or none), groups whose display names map to roles. The protocol (JSON, filters, PATCH) is sso/scim_api.py."""
from django.contrib.auth import get_user_model
from django.db import transaction

from core.tokens import TokenKind
from sso.models import IdentityProvider, ScimGroup, ScimToken, ScimUser
from sso.provisioning import email_verified_record, membership_provision, role_for
from sso.selectors import email_domain, is_uuid, verified_domains
from tenants import policy
from tenants import services as tenant_services
from tenants.audit import audit_record
from tenants.exceptions import Conflict, Forbidden, NotFound, ServiceError
from tenants.models import Membership, Tenant

User = get_user_model()
TOKEN_PREFIX = "hsc_"


def _token_with_provider(digest):
    return (ScimToken.objects.select_related("identity_provider__tenant__plan")
            .filter(token_hash=digest, revoked_at__isnull=True).first())


# No cache: a revoked token is refused on its very next request in every process.
SCIM_TOKENS = TokenKind(model=ScimToken, prefix=TOKEN_PREFIX, action="scim_token", audit=audit_record,
                        lookup=_token_with_provider)


def _token_label(token):
    return f"idp:{token.identity_provider_id}:{token.prefix}"


def directory_actor(identity_provider):
    """Who acts in the audit trail when the directory calls: the identity provider, by its key."""
    return f"scim:idp:{identity_provider.pk}"


# --- the token -------------------------------------------------------------------------------------------------------


def scim_token_issue(*, identity_provider, actor):
    """A new SCIM token for the provider (owners, staff); a live one is revoked in the same transaction (rotation).
    Returns (token, plaintext shown once, the revoked token or None). Only plans with single sign-on have one."""
    tenant = identity_provider.tenant
    policy.require_owner(tenant=tenant, actor=actor)
    policy.sso_check(tenant)
    policy.require_not_offboarded(tenant)
    with transaction.atomic():
        provider = IdentityProvider.objects.select_for_update().get(pk=identity_provider.pk)  # one rotation at a time
        old = ScimToken.objects.filter(identity_provider=provider, revoked_at__isnull=True).first()
        if old is not None:
            SCIM_TOKENS.revoke(token=old, tenant=tenant, actor=actor, target=_token_label)
        token, plaintext = SCIM_TOKENS.create(
            tenant=tenant, actor=actor, identity_provider=provider, name=f"SCIM for identity provider {provider.pk}",
            target=_token_label, data={"identity_provider": provider.pk, "rotates": old.prefix if old else None})
    return token, plaintext, old


def scim_token_revoke(*, identity_provider, actor):
    """Revoke the provider's live SCIM token (owners, staff): the directory's next call is refused."""
    policy.require_owner(tenant=identity_provider.tenant, actor=actor)
    token = ScimToken.objects.filter(identity_provider=identity_provider, revoked_at__isnull=True).first()
    if token is None:
        raise NotFound("This identity provider has no live SCIM token.")
    return SCIM_TOKENS.revoke(token=token, tenant=identity_provider.tenant, actor=actor, target=_token_label)


def scim_token_authenticate(plaintext):
    """The live token (its provider, tenant and plan loaded), or None."""
    return SCIM_TOKENS.authenticate(plaintext)


# --- users -----------------------------------------------------------------------------------------------------------


def _lock_tenant(identity_provider):
    """The provider's tenant, locked for the caller's transaction: it serialises seat counting with invitations and
    sign-ins (provisioning locks it too), and every directory change of the tenant."""
    tenant = Tenant.objects.select_related("plan").select_for_update(of=("self",)).get(
        pk=identity_provider.tenant_id)
    policy.require_not_offboarded(tenant)
    return tenant


def _email(identity_provider, user_name):
    email = str(user_name or "").strip().lower()
    if not email_domain(email):
        raise ServiceError(f"userName '{user_name}' is not an email address.", code="invalidValue",
                           field="userName")
    if email_domain(email) not in verified_domains(identity_provider):
        # As for sign-ins: a directory provisions addresses of its own verified domains only.
        raise ServiceError(f"{email} is not in this identity provider's verified domains.", code="invalidValue",
                           field="userName")
    return email


def _names_set(user, given_name, family_name):
    given = user.first_name if given_name is None else str(given_name)[:150]
    family = user.last_name if family_name is None else str(family_name)[:150]
    if (user.first_name, user.last_name) != (given, family):
        user.first_name, user.last_name = given, family
        user.save(update_fields=["first_name", "last_name"])


def _role(scim_user):
    return role_for(scim_user.identity_provider, [g.display_name for g in scim_user.groups.all()])


def _activate(*, tenant, scim_user):
    try:
        membership_provision(tenant=tenant, user=scim_user.user, role=_role(scim_user),
                             provider=scim_user.identity_provider)
    except Conflict as exc:
        if exc.code != "seat_limit":
            raise
        raise Conflict(f"{tenant.name} has no free seat on its {tenant.plan.name} plan ({tenant.plan.seats} "
                       f"seats): free a seat or upgrade the plan in Hearth.", code="seat_limit") from None


def _deactivate(*, tenant, scim_user):
    """The membership goes (member_remove's path: API tokens, portal sessions, workspace sessions after commit)."""
    membership = Membership.objects.filter(tenant=tenant, user=scim_user.user).first()
    if membership is not None:
        membership.tenant = tenant
        tenant_services.member_deprovision(membership=membership,
                                           actor=directory_actor(scim_user.identity_provider))
    return membership is not None


def scim_user_create(*, identity_provider, user_name, given_name=None, family_name=None, external_id="",
                     active=True):
    """Provision a user: the Hearth account (made if new: no password, it signs in through the IdP) and, if
    active, a membership with the mapped role within the plan's seats (Conflict seat_limit when full). A member
    already in the tenant (invited before) is linked as they are; provisioned inactive, they are removed."""
    email = _email(identity_provider, user_name)
    actor = directory_actor(identity_provider)
    with transaction.atomic():
        tenant = _lock_tenant(identity_provider)
        if ScimUser.objects.filter(identity_provider=identity_provider, user_name__iexact=email).exists():
            raise Conflict(f"{email} is already provisioned by this identity provider.", code="uniqueness")
        user = User.objects.filter(email__iexact=email).first() or User.objects.create_user(email=email)
        if not user.is_active:
            raise Forbidden(f"The Hearth account {email} is deactivated.", code="account_inactive")
        _names_set(user, given_name, family_name)
        scim_user = ScimUser.objects.create(identity_provider=identity_provider, user=user, user_name=email,
                                            external_id=str(external_id or "")[:255], active=bool(active))
        if scim_user.active:
            _activate(tenant=tenant, scim_user=scim_user)
        else:  # provisioned inactive: no membership, even one the user had before
            _deactivate(tenant=tenant, scim_user=scim_user)
        email_verified_record(user, email)
        audit_record(tenant=tenant, actor=actor, action="scim.user_provisioned", target=email,
                     data={"scim_id": str(scim_user.pk), "active": scim_user.active,
                           "identity_provider": identity_provider.pk})
    return scim_user


def scim_user_update(*, scim_user, user_name=None, given_name=None, family_name=None, external_id=None,
                     active=None):
    """Change what the directory says of a user (None: unchanged). active false removes the membership at once;
    true provisions it again within the seats. The address (userName) cannot change: it is the user's Hearth
    account in every tenant."""
    provider = scim_user.identity_provider
    actor = directory_actor(provider)
    with transaction.atomic():
        tenant = _lock_tenant(provider)
        scim_user = ScimUser.objects.select_for_update().select_related("user", "identity_provider").get(
            pk=scim_user.pk)
        if user_name is not None and str(user_name).strip().lower() != scim_user.user_name.lower():
            raise ServiceError("userName cannot change: it is the user's Hearth account (email address). "
                               "Provision the new address as a new user.", code="mutability", field="userName")
        _names_set(scim_user.user, given_name, family_name)
        changed = []
        if external_id is not None and str(external_id)[:255] != scim_user.external_id:
            scim_user.external_id = str(external_id)[:255]
            changed.append("externalId")
        if given_name is not None or family_name is not None:
            changed.append("name")
        if active is not None and bool(active) != scim_user.active:
            scim_user.active = bool(active)
            if scim_user.active:
                _activate(tenant=tenant, scim_user=scim_user)
                action, data = "scim.user_reactivated", {}
            else:
                action, data = "scim.user_deactivated", {"membership_removed": _deactivate(tenant=tenant,
                                                                                           scim_user=scim_user)}
            audit_record(tenant=tenant, actor=actor, action=action, target=scim_user.user_name,
                         data={"scim_id": str(scim_user.pk), **data})
        scim_user.save()
        if changed:
            audit_record(tenant=tenant, actor=actor, action="scim.user_changed", target=scim_user.user_name,
                         data={"scim_id": str(scim_user.pk), "fields": changed})
    return scim_user


def scim_user_delete(*, scim_user):
    """The directory deletes a user: the membership goes as on deactivation, and the SCIM record with it. The
    Hearth account stays (it may belong to other tenants)."""
    provider = scim_user.identity_provider
    with transaction.atomic():
        tenant = _lock_tenant(provider)
        scim_user = ScimUser.objects.select_for_update().select_related("user", "identity_provider").get(
            pk=scim_user.pk)
        removed = _deactivate(tenant=tenant, scim_user=scim_user)
        scim_user.delete()
        audit_record(tenant=tenant, actor=directory_actor(provider), action="scim.user_deleted",
                     target=scim_user.user_name, data={"scim_id": str(scim_user.pk), "membership_removed": removed})


# --- groups ----------------------------------------------------------------------------------------------------------


def _scim_users(identity_provider, ids):
    ids = [str(i) for i in ids]
    found = {str(u.pk): u for u in ScimUser.objects.filter(identity_provider=identity_provider, pk__in=[
        i for i in ids if is_uuid(i)])}
    missing = [i for i in ids if i not in found]
    if missing:
        raise ServiceError(f"No such user: {', '.join(missing)}.", code="invalidValue", field="members")
    return list(found.values())


def _roles_sync(*, tenant, scim_users):
    """Each active user's role follows their groups (an owner keeps theirs); a user without a membership (removed in
    Hearth, or inactive) is not added back by a group change."""
    for scim_user in scim_users:
        scim_user = ScimUser.objects.select_related("user", "identity_provider").get(pk=scim_user.pk)
        if scim_user.active and Membership.objects.filter(tenant=tenant, user=scim_user.user).exists():
            membership_provision(tenant=tenant, user=scim_user.user, role=_role(scim_user),
                                 provider=scim_user.identity_provider)


def _display_name(value):
    name = str(value or "").strip()
    if not name or len(name) > 255:
        raise ServiceError("displayName is required (255 characters at most).", code="invalidValue",
                           field="displayName")
    return name


def _display_name_free(identity_provider, name, *, exclude=None):
    taken = ScimGroup.objects.filter(identity_provider=identity_provider, display_name__iexact=name)
    if exclude is not None:
        taken = taken.exclude(pk=exclude.pk)
    if taken.exists():
        raise Conflict(f"A group named '{name}' exists already.", code="uniqueness")


def scim_group_create(*, identity_provider, display_name, external_id="", member_ids=()):
    name = _display_name(display_name)
    with transaction.atomic():
        tenant = _lock_tenant(identity_provider)
        _display_name_free(identity_provider, name)
        members = _scim_users(identity_provider, member_ids)
        group = ScimGroup.objects.create(identity_provider=identity_provider, display_name=name,
                                         external_id=str(external_id or "")[:255])
        group.members.set(members)
        _roles_sync(tenant=tenant, scim_users=members)
        audit_record(tenant=tenant, actor=directory_actor(identity_provider), action="scim.group_created",
                     target=name, data={"scim_id": str(group.pk), "members": len(members),
                                        "role": identity_provider.group_roles.get(name)})
    return group


def scim_group_update(*, group, display_name=None, external_id=None, add=(), remove=(), members=None):
    """Rename the group, add or remove members, or replace them all (`members`); the roles of everyone whose
    groups changed follow, in the same transaction."""
    provider = group.identity_provider
    with transaction.atomic():
        tenant = _lock_tenant(provider)
        group = ScimGroup.objects.select_for_update().get(pk=group.pk)
        before = set(group.members.all())
        changed = {}
        if display_name is not None and _display_name(display_name) != group.display_name:
            name = _display_name(display_name)
            _display_name_free(provider, name, exclude=group)
            changed["displayName"] = {"from": group.display_name, "to": name}
            group.display_name = name
        if external_id is not None:
            group.external_id = str(external_id)[:255]
        group.save()
        after = set(before)
        if members is not None:
            after = set(_scim_users(provider, members))
        after |= set(_scim_users(provider, add))
        # Removing someone who is not (or no longer) a user here is no error: the directory may be catching up.
        after -= {u for u in before | after if str(u.pk) in {str(i) for i in remove}}
        if after != before:
            group.members.set(after)
            changed["members"] = {"added": sorted(u.user_name for u in after - before),
                                  "removed": sorted(u.user_name for u in before - after)}
        affected = (before | after) if "displayName" in changed else (before ^ after)
        _roles_sync(tenant=tenant, scim_users=sorted(affected, key=lambda u: str(u.pk)))
        if changed:
            audit_record(tenant=tenant, actor=directory_actor(provider), action="scim.group_changed",
                         target=group.display_name, data={"scim_id": str(group.pk), **changed})
    return group


def scim_group_delete(*, group):
    provider = group.identity_provider
    with transaction.atomic():
        tenant = _lock_tenant(provider)
        group = ScimGroup.objects.select_for_update().get(pk=group.pk)
        members = list(group.members.all())
        group.delete()
        _roles_sync(tenant=tenant, scim_users=members)
        audit_record(tenant=tenant, actor=directory_actor(provider), action="scim.group_deleted",
                     target=group.display_name, data={"scim_id": str(group.pk), "members": len(members)})
