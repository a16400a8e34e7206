"""Reads of the sso app: a tenant's identity providers (tenant first; not yours is not found), and the routing of an
email address to the identity provider of its verified domain."""
from django.db.models.functions import Lower

from sso.models import IdentityProvider, SsoDomain
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
