"""Writes of the sso app: identity providers (owners through the API, staff in admin), their domains and the
verification of each, and the tenant's enforcement of single sign-on that follows from them."""
import re
import secrets
from urllib.parse import urlparse

from django.db import IntegrityError, transaction
from django.db.models.functions import Lower
from django.utils import timezone

from sso import encryption, saml_config, verification
from sso.models import DEFAULT_CLAIMS, SAML_ATTRIBUTES, IdentityProvider, SsoDomain
from tenants import policy
from tenants.audit import audit_record
from tenants.exceptions import Conflict, NotFound, ServiceError
from tenants.models import Role, Tenant

MAX_DOMAINS = 50
_DOMAIN = re.compile(r"^(?=.{1,253}$)(?!-)[a-z0-9-]{1,63}(?<!-)(\.(?!-)[a-z0-9-]{1,63}(?<!-))+$")
# Roles an identity provider may give. Owners are made in Hearth only: a group in the IdP never makes or unmakes one.
MAPPABLE_ROLES = (Role.MEMBER, Role.ADMIN)
# Fields a change may carry, per kind; `client_secret` is written encrypted.
OIDC_FIELDS = ("issuer", "client_id", "client_secret", "scopes", "claim_mapping")
SAML_FIELDS = ("metadata_url", "metadata_xml", "entity_id", "attribute_mapping")
COMMON_FIELDS = ("domains", "default_role", "group_roles", "enforce_sso")


# --- validation ----------------------------------------------------------------------------------------------------


def _domain_normalise(value):
    domain = str(value or "").strip().lower().rstrip(".")
    if domain.startswith("@"):
        domain = domain[1:]
    if not _DOMAIN.match(domain):
        raise ServiceError(f"'{value}' is not a domain name (e.g. example.com).", field="domains")
    return domain


def _domains_normalise(values):
    if not isinstance(values, (list, tuple)):
        raise ServiceError("'domains' is a list of domain names.", field="domains")
    domains = list(dict.fromkeys(_domain_normalise(value) for value in values))
    if len(domains) > MAX_DOMAINS:
        raise ServiceError(f"At most {MAX_DOMAINS} domains per identity provider.", field="domains")
    return domains


def _url(value, *, field):
    value = (value or "").strip()
    parsed = urlparse(value)
    if parsed.scheme not in ("https", "http") or not parsed.netloc:
        raise ServiceError(f"'{value}' is not an http(s) URL.", field=field)
    return value


def _role(value, *, field):
    if value not in MAPPABLE_ROLES:
        raise ServiceError(f"'{value}' cannot be given by an identity provider: use {' or '.join(MAPPABLE_ROLES)} "
                           f"(owners are made in Hearth).", field=field)
    return value


def _mapping(value, *, field, known=None):
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ServiceError(f"'{field}' is an object of names to names.", field=field)
    unknown = sorted(set(value) - set(known)) if known else []
    if unknown:
        raise ServiceError(f"Unknown keys in '{field}': {', '.join(unknown)}; known: {', '.join(known)}.", field=field)
    return value


def _clean(kind, changes):
    """The validated model values for `changes` (a dict of API field → value)."""
    allowed = COMMON_FIELDS + (OIDC_FIELDS if kind == IdentityProvider.Kind.OIDC else SAML_FIELDS)
    refused = sorted(set(changes) - set(allowed))
    if refused:
        raise ServiceError(f"Not a field of a {kind} identity provider: {', '.join(refused)}.", field=refused[0])
    values = {}
    for field, value in changes.items():
        if field in ("issuer", "metadata_url"):
            values[field] = _url(value, field=field) if value or field == "issuer" else ""
        elif field == "client_secret":
            if not value:
                raise ServiceError("The client secret cannot be empty.", field=field)
            values["client_secret_encrypted"] = encryption.encrypt(str(value))
        elif field == "scopes":
            scopes = " ".join(value) if isinstance(value, (list, tuple)) else str(value or "")
            if "openid" not in scopes.split():
                raise ServiceError("The scopes must include 'openid'.", field=field)
            values[field] = " ".join(dict.fromkeys(scopes.split()))
        elif field == "claim_mapping":
            values[field] = _mapping(value, field=field, known=DEFAULT_CLAIMS)
        elif field == "attribute_mapping":
            values[field] = _mapping(value, field=field, known=SAML_ATTRIBUTES)
        elif field == "group_roles":
            values[field] = _mapping(value, field=field)
            for role in value.values():
                _role(role, field=field)
        elif field == "default_role":
            values[field] = _role(value, field=field)
        elif field == "enforce_sso":
            if not isinstance(value, bool):
                raise ServiceError("'enforce_sso' is true or false.", field=field)
            values[field] = value
        elif field == "domains":
            values[field] = _domains_normalise(value)
        else:
            values[field] = str(value or "").strip()
    return values


def _require_complete(provider):
    if provider.kind == IdentityProvider.Kind.OIDC:
        missing = [name for name, attr in (("issuer", "issuer"), ("client_id", "client_id"),
                                           ("client_secret", "client_secret_encrypted")) if not getattr(provider, attr)]
        if missing:
            raise ServiceError(f"An OIDC identity provider needs {', '.join(missing)}.", field=missing[0])
    elif not (provider.metadata_url or provider.metadata_xml):
        raise ServiceError("A SAML identity provider needs metadata_url or metadata_xml.", field="metadata_url")
    elif provider.metadata_xml:
        # Pasted metadata is checked now (a URL's at sign-in); the IdP's entity id is read from it if not given.
        provider.entity_id = saml_config.metadata_check(provider.metadata_xml, entity_id=provider.entity_id)


def _sp_keypair_set(provider):
    """Hearth's own key pair as the SP of a new SAML IdP: the private key is stored encrypted, never shown."""
    key_pem, cert_pem = saml_config.sp_keypair_generate(f"Hearth SAML SP {provider.tenant.slug}")
    provider.sp_certificate, provider.sp_private_key_encrypted = cert_pem, encryption.encrypt(key_pem)


# --- identity providers ----------------------------------------------------------------------------------------------


def identity_provider_create(*, tenant, actor, kind=IdentityProvider.Kind.OIDC, **fields):
    """A new identity provider of `tenant` (owners, or staff); its domains start unverified."""
    policy.require_owner(tenant=tenant, actor=actor)
    policy.require_not_offboarded(tenant)
    policy.sso_check(tenant)
    if kind not in IdentityProvider.Kind.values:
        raise ServiceError(f"Unknown kind '{kind}'. Kinds: {', '.join(IdentityProvider.Kind.values)}.", field="kind")
    values = _clean(kind, fields)
    domains = values.pop("domains", [])
    provider = IdentityProvider(tenant=tenant, kind=kind, **values)
    _require_complete(provider)
    if kind == IdentityProvider.Kind.SAML:
        _sp_keypair_set(provider)
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        provider.save()
        _domains_set(provider, domains)
        audit_record(tenant=tenant, actor=actor, action="sso.identity_provider_created", target=provider.pk,
                     data={"kind": kind, "issuer": provider.issuer or provider.entity_id, "domains": domains})
        _enforcement_sync(tenant)
    return provider


def identity_provider_update(*, identity_provider, actor, **changes):
    """Change some fields; `domains` replaces the list (kept domains keep their verification)."""
    tenant = identity_provider.tenant
    policy.require_owner(tenant=tenant, actor=actor)
    policy.require_not_offboarded(tenant)
    policy.sso_check(tenant)
    if "kind" in changes and changes.pop("kind") != identity_provider.kind:
        raise ServiceError("The kind of an identity provider cannot change: create another one.", field="kind")
    values = _clean(identity_provider.kind, changes)
    domains = values.pop("domains", None)
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        provider = IdentityProvider.objects.select_for_update().get(pk=identity_provider.pk)
        if {"metadata_xml", "metadata_url"} & set(values) and "entity_id" not in values:
            provider.entity_id = ""  # read again from the new metadata
        for field, value in values.items():
            setattr(provider, field, value)
        _require_complete(provider)
        provider.save()
        if domains is not None:
            _domains_set(provider, domains)
        changed = sorted(set(values) | ({"domains"} if domains is not None else set()))
        audit_record(tenant=tenant, actor=actor, action="sso.identity_provider_changed", target=provider.pk,
                     data={"fields": changed, **({"domains": domains} if domains is not None else {})})
        _enforcement_sync(tenant)
    return provider


def identity_provider_delete(*, identity_provider, actor):
    tenant = identity_provider.tenant
    policy.require_owner(tenant=tenant, actor=actor)
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        deleted, _ = IdentityProvider.objects.filter(pk=identity_provider.pk).delete()
        if not deleted:
            raise NotFound("No such identity provider.")
        audit_record(tenant=tenant, actor=actor, action="sso.identity_provider_deleted",
                     target=identity_provider.pk, data={"issuer": identity_provider.issuer})
        _enforcement_sync(tenant)


# --- domains ---------------------------------------------------------------------------------------------------------


def _domains_set(provider, domains):
    existing = {row.domain: row for row in provider.domains.all()}
    SsoDomain.objects.filter(pk__in=[row.pk for domain, row in existing.items() if domain not in domains]).delete()
    for domain in domains:
        if domain in existing:
            continue
        if SsoDomain.objects.annotate(lower=Lower("domain")).filter(lower=domain, verified_at__isnull=False).exists():
            raise Conflict(f"{domain} is already verified by another identity provider: a domain belongs to one "
                           f"tenant only.", code="domain_taken", field="domains")
        SsoDomain.objects.create(identity_provider=provider, domain=domain,
                                 verification_token=secrets.token_urlsafe(24))


def _domain_mark_verified(row, *, by, actor):
    tenant = row.identity_provider.tenant
    try:
        with transaction.atomic():
            Tenant.objects.select_for_update().get(pk=tenant.pk)
            row = SsoDomain.objects.select_for_update().get(pk=row.pk)
            if row.verified_at is not None:
                return row
            row.verified_at, row.verified_by = timezone.now(), by
            row.save(update_fields=["verified_at", "verified_by"])
            audit_record(tenant=tenant, actor=actor, action="sso.domain_verified", target=row.domain,
                         data={"by": by, "identity_provider": row.identity_provider_id})
            _enforcement_sync(tenant)
    except IntegrityError:
        raise Conflict(f"{row.domain} is already verified by another tenant: a domain belongs to one tenant only.",
                       code="domain_taken", field="domains") from None
    return row


def domains_verify_dns(*, identity_provider, actor):
    """Check each unverified domain's TXT record; returns the provider's domains (verified or not) after the
    check. Owners (and staff) run it; so may a periodic task later."""
    policy.require_owner(tenant=identity_provider.tenant, actor=actor)
    policy.sso_check(identity_provider.tenant)
    rows = list(identity_provider.domains.all())
    for row in rows:
        if row.verified_at is None and verification.domain_proves_ownership(row.domain, txt_record=row.txt_record):
            _domain_mark_verified(row, by="dns", actor=actor)
    return list(identity_provider.domains.all())


def domain_verify_by_staff(*, domain, actor, identity_provider=None):
    """Staff vouch for a domain (admin, `manage.py sso_domain_verify`). With several claims of the domain, say
    which identity provider's claim is verified."""
    domain = _domain_normalise(domain)
    rows = SsoDomain.objects.annotate(lower=Lower("domain")).filter(lower=domain).select_related(
        "identity_provider__tenant")
    if identity_provider is not None:
        rows = rows.filter(identity_provider=identity_provider)
    rows = list(rows)
    if not rows:
        raise NotFound(f"No identity provider lists the domain {domain}.", field="domain")
    if len(rows) > 1 and not any(row.verified_at for row in rows):
        tenants = ", ".join(sorted(row.identity_provider.tenant.slug for row in rows))
        raise Conflict(f"{domain} is claimed by several tenants ({tenants}): name the identity provider.",
                       code="domain_ambiguous", field="domain")
    row = next((row for row in rows if row.verified_at), rows[0])
    return _domain_mark_verified(row, by=_actor_label(actor), actor=actor)


def _actor_label(actor):
    return actor if isinstance(actor, str) else f"staff:{getattr(actor, 'email', '') or actor}"


# --- enforcement -----------------------------------------------------------------------------------------------------


def _enforcement_sync(tenant):
    """Set or clear `Tenant.sso_enforced_at`, in the caller's transaction (the tenant row is locked): enforced when
    an identity provider says so and has a verified domain (else nobody could sign in). Tokens and passwords are
    judged against it by tenants.policy."""
    enforced = SsoDomain.objects.filter(identity_provider__tenant=tenant, identity_provider__enforce_sso=True,
                                        verified_at__isnull=False).exists()
    current = Tenant.objects.filter(pk=tenant.pk).values_list("sso_enforced_at", flat=True).get()
    if enforced == (current is not None):
        return
    at = timezone.now() if enforced else None
    Tenant.objects.filter(pk=tenant.pk).update(sso_enforced_at=at)
    tenant.sso_enforced_at = at
    audit_record(tenant=tenant, actor="sso", action="sso.enforced" if enforced else "sso.enforcement_lifted",
                 target=tenant.slug)
