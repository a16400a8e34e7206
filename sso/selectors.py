"""Reads of the sso app: a tenant's identity providers (tenant first; not yours is not found), the routing of an
email address to the identity provider of its verified domain, and the users and groups its directory provisioned
over SCIM."""
import uuid

from django.db.models.functions import Lower

from sso.models import IdentityProvider, ScimGroup, ScimToken, ScimUser, SsoDomain
from tenants.exceptions import NotFound


def identity_provider_list(*, tenant):
    return IdentityProvider.objects.filter(tenant=tenant).prefetch_related("domains").order_by("pk")


def identity_provider_get(*, tenant, identity_provider_id):
    provider = identity_provider_list(tenant=tenant).filter(pk=identity_provider_id).first()
    if provider is None:
        raise NotFound("No such identity provider.")
    return provider


def email_domain(email):
    """The domain of an address, lower-case; "" when it is not an address."""
    local, at, domain = str(email or "").strip().rpartition("@")
    return domain.lower().rstrip(".") if at and local and "." in domain else ""


def identity_provider_for_email(email):
    """The identity provider whose verified domain is the address's, with its tenant and plan; or None. Unverified
    claims never route."""
    domain = email_domain(email)
    if not domain:
        return None
    row = (SsoDomain.objects.annotate(lower=Lower("domain"))
           .filter(lower=domain, verified_at__isnull=False)
           .select_related("identity_provider__tenant__plan").first())
    return row.identity_provider if row else None


def verified_domains(identity_provider):
    return {d.lower() for d in identity_provider.domains.filter(verified_at__isnull=False)
            .values_list("domain", flat=True)}


# --- SCIM ------------------------------------------------------------------------------------------------------------


def scim_token_live(*, tenant, identity_provider):
    token = ScimToken.objects.filter(identity_provider=identity_provider, identity_provider__tenant=tenant,
                                     revoked_at__isnull=True).first()
    if token is None:
        raise NotFound("This identity provider has no live SCIM token.")
    return token


def scim_user_list(*, tenant, identity_provider):
    return (ScimUser.objects.filter(identity_provider=identity_provider, identity_provider__tenant=tenant)
            .select_related("user").prefetch_related("groups").order_by("created_at", "pk"))


def scim_user_get(*, tenant, identity_provider, scim_user_id):
    return _by_uuid(scim_user_list(tenant=tenant, identity_provider=identity_provider), scim_user_id, "user")


def scim_group_list(*, tenant, identity_provider):
    return (ScimGroup.objects.filter(identity_provider=identity_provider, identity_provider__tenant=tenant)
            .prefetch_related("members").order_by("created_at", "pk"))


def scim_group_get(*, tenant, identity_provider, scim_group_id):
    return _by_uuid(scim_group_list(tenant=tenant, identity_provider=identity_provider), scim_group_id, "group")


def is_uuid(value):
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return True


def _by_uuid(queryset, value, kind):
    found = queryset.filter(pk=value).first() if is_uuid(value) else None
    if found is None:
        raise NotFound(f"No such {kind}.")
    return found
