"""Service tokens: the credentials other services use to report usage (`hsv_…`), a kind of core.tokens."""
from core.tokens import TokenKind
from metering.models import ServiceToken
from tenants.audit import audit_record
from tenants.exceptions import ServiceError

SERVICE_TOKEN_PREFIX = "hsv_"

# Ingestion is hot: an authenticated service token is kept for 5 s per process, so a revocation takes effect in the
# other processes within 5 s.
SERVICE_TOKENS = TokenKind(model=ServiceToken, prefix=SERVICE_TOKEN_PREFIX, action="service_token",
                           audit=audit_record, cache_seconds=5)
_token_cache = SERVICE_TOKENS.cache


def _target(token):
    return f"{token.name}:{token.prefix}"


def service_token_create(*, name, actor=None):
    """Create a service token; returns (ServiceToken, plaintext shown once). Only its SHA-256 is stored."""
    name = (name or "").strip()[:80]
    if not name:
        raise ServiceError("A service token needs a name (which service uses it).", field="name")
    return SERVICE_TOKENS.create(tenant=None, actor=actor, target=_target, name=name,
                                 created_by=actor if getattr(actor, "pk", None) else None)


def service_token_revoke(*, token, actor=None):
    return SERVICE_TOKENS.revoke(token=token, tenant=None, actor=actor, target=_target)


def service_token_authenticate(plaintext, *, now=None):
    """The live service token for `plaintext`, or None."""
    return SERVICE_TOKENS.authenticate(plaintext, now=now)
