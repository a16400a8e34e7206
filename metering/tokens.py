"""Service tokens: the credentials other services use to report usage (`hsv_…`), a kind of core.tokens, and their
scope (the meters and tenants each may write for)."""
from django.db import transaction
from django.utils.text import slugify

from core.tokens import TokenKind
from metering.meters import PLATFORM_METERS
from metering.models import ServiceToken
from tenants.audit import audit_record
from tenants.exceptions import ServiceError
from tenants.models import Tenant

SERVICE_TOKEN_PREFIX = "hsv_"

# Ingestion is hot: an authenticated service token is kept for 5 s per process, so a revocation or a change of scope
# takes effect in the other processes within 5 s.
SERVICE_TOKENS = TokenKind(model=ServiceToken, prefix=SERVICE_TOKEN_PREFIX, action="service_token",
                           audit=audit_record, cache_seconds=5)
_token_cache = SERVICE_TOKENS.cache


def _target(token):
    return f"{token.name}:{token.prefix}"


def _slugs(values):
    """A list of slugs from a list or a comma-separated string, blanks dropped, order kept, no repeats."""
    if isinstance(values, str):
        values = values.split(",")
    return list(dict.fromkeys(v.strip() for v in values or () if v and v.strip()))


def service_token_scope_clean(*, meters, tenants):
    """(meters, tenants) as slug lists, or ServiceError: no platform meter, well-formed meter slugs (a meter may be
    declared after its token is made), tenants that exist."""
    meters, tenants = _slugs(meters), _slugs(tenants)
    platform = [m for m in meters if m in PLATFORM_METERS]
    if platform:
        raise ServiceError(f"{', '.join(platform)}: the platform's own meters are written by Hearth only, never by a "
                           "service token.", code="platform_meter", field="meters")
    bad = [m for m in meters if len(m) > 64 or slugify(m).replace("-", "_") != m.replace("-", "_")]
    if bad:
        raise ServiceError(f"Not meter slugs: {', '.join(bad)}.", field="meters")
    unknown = sorted(set(tenants) - set(Tenant.objects.filter(slug__in=tenants).values_list("slug", flat=True)))
    if unknown:
        raise ServiceError(f"No such tenant: {', '.join(unknown)}.", field="tenants")
    return meters, tenants


def service_token_create(*, name, meters=(), tenants=(), actor=None):
    """Create a service token scoped to `meters` (and to `tenants` if any); returns (ServiceToken, plaintext shown
    once). Only its SHA-256 is stored. Without meters it writes nothing until scoped (service_token_scope_set)."""
    name = (name or "").strip()[:80]
    if not name:
        raise ServiceError("A service token needs a name (which service uses it).", field="name")
    meters, tenants = service_token_scope_clean(meters=meters, tenants=tenants)
    return SERVICE_TOKENS.create(tenant=None, actor=actor, target=_target, name=name, meters=meters,
                                 tenant_slugs=tenants, data={"meters": meters, "tenants": tenants},
                                 created_by=actor if getattr(actor, "pk", None) else None)


def service_token_scope_set(*, token, meters, tenants, actor=None):
    """Replace a token's scope, with an audit row of before and after; returns the updated row."""
    meters, tenants = service_token_scope_clean(meters=meters, tenants=tenants)
    with transaction.atomic():
        token = ServiceToken.objects.select_for_update().get(pk=token.pk)
        before = {"meters": token.meters, "tenants": token.tenant_slugs}
        token.meters, token.tenant_slugs = meters, tenants
        token.save(update_fields=["meters", "tenant_slugs"])
        audit_record(tenant=None, actor=actor, action="service_token.scoped", target=_target(token),
                     data={"before": before, "after": {"meters": meters, "tenants": tenants}})
    _token_cache.pop(token.token_hash, None)
    return token


def service_token_revoke(*, token, actor=None):
    return SERVICE_TOKENS.revoke(token=token, tenant=None, actor=actor, target=_target)


def service_token_authenticate(plaintext, *, now=None):
    """The live service token for `plaintext`, or None."""
    return SERVICE_TOKENS.authenticate(plaintext, now=now)
