"""Service tokens: the credentials other services use to report usage. Only a SHA-256 of each is stored."""
import hashlib
import secrets

from django.db import transaction
from django.utils import timezone

from metering.models import ServiceToken
from tenants.audit import audit_record
from tenants.exceptions import ServiceError

SERVICE_TOKEN_PREFIX = "hsv_"


def _hash(value):
    return hashlib.sha256(value.encode()).hexdigest()


def service_token_create(*, name, actor=None):
    """Create a service token; returns (ServiceToken, plaintext shown once). Only its SHA-256 is stored."""
    name = (name or "").strip()[:80]
    if not name:
        raise ServiceError("A service token needs a name (which service uses it).", field="name")
    prefix = secrets.token_hex(4)
    plaintext = f"{SERVICE_TOKEN_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        token = ServiceToken.objects.create(name=name, prefix=prefix, token_hash=_hash(plaintext),
                                            created_by=actor if getattr(actor, "pk", None) else None)
        audit_record(tenant=None, actor=actor, action="service_token.created", target=f"{name}:{prefix}")
    return token, plaintext


def service_token_revoke(*, token, actor=None):
    with transaction.atomic():
        token = ServiceToken.objects.select_for_update().get(pk=token.pk)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit_record(tenant=None, actor=actor, action="service_token.revoked",
                         target=f"{token.name}:{token.prefix}")
    return token


_token_cache = {}  # hash -> (token, cached at): ingestion is hot, revocation takes effect within a few seconds


def service_token_authenticate(plaintext, *, now=None):
    if not plaintext or not plaintext.startswith(SERVICE_TOKEN_PREFIX):
        return None
    now = now or timezone.now()
    digest = _hash(plaintext)
    hit = _token_cache.get(digest)
    if hit is not None and (now - hit[1]).total_seconds() < 5:
        return hit[0]
    token = ServiceToken.objects.filter(token_hash=digest, revoked_at__isnull=True).first()
    if token is not None and (token.last_used_at is None or (now - token.last_used_at).total_seconds() > 60):
        ServiceToken.objects.filter(pk=token.pk).update(last_used_at=now)
    if token is None:
        _token_cache.pop(digest, None)
    else:
        _token_cache[digest] = (token, now)
    return token
