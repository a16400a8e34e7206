"""Bearer tokens, one implementation for every kind: the format, the stored hash, creation and revocation with an
audit row, and authentication. Each app declares its kind and names its own entry points (tenants: personal API
tokens `hth_…`; metering: service tokens `hsv_…`)."""
import hashlib
import secrets
from datetime import timedelta

from django.db import models, transaction
from django.utils import timezone

# last_used_at is for people deciding which token to revoke: to the minute is enough, and a write per request would
# cost every API call a round trip and a commit.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_secret(value):
    """What is stored of a token (or invitation) secret: its SHA-256, so a database leak reveals no credential."""
    return hashlib.sha256(value.encode()).hexdigest()


class BearerToken(models.Model):
    """The fields every kind of token has. Only the SHA-256 of the plaintext is stored."""

    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16, help_text="Shown to tell tokens apart; not secret.")
    token_hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        abstract = True
        ordering = ["-created_at"]

    def __str__(self):
        return f"{self.name} ({self.prefix}…)"

    @property
    def is_active(self):
        return self.revoked_at is None


class TokenKind:
    """One kind of token: `<prefix><8 hex>_<secret>` in `model`, audited as `<action>.created` / `<action>.revoked`
    through `audit` (tenants.audit.audit_record: core depends on no app).

    `lookup(digest)` returns the live token row for a hash, or None (default: the row alone, through the ORM; a kind
    may load what its callers need in the same statement). `cache_seconds` > 0 keeps an authenticated token in this
    process that long: revocation then takes effect in the other processes within that many seconds (at once in
    the one that revoked it).
    """

    def __init__(self, *, model, prefix, action, audit, lookup=None, cache_seconds=0):
        self.model, self.prefix, self.action, self.audit = model, prefix, action, audit
        self.lookup = lookup or self._row
        self.cache_seconds = cache_seconds
        self.cache = {}  # hash -> (token, authenticated at)

    def _row(self, digest):
        return self.model.objects.filter(token_hash=digest, revoked_at__isnull=True).first()

    def create(self, *, tenant, actor, target, data=None, **fields):
        """A new token with `fields`; returns (token, plaintext shown once). `target(token)` names it in the audit
        row, written in the same transaction."""
        prefix = secrets.token_hex(4)
        plaintext = f"{self.prefix}{prefix}_{secrets.token_urlsafe(32)}"
        with transaction.atomic():
            token = self.model.objects.create(prefix=prefix, token_hash=hash_secret(plaintext), **fields)
            self.audit(tenant=tenant, actor=actor, action=f"{self.action}.created", target=target(token), data=data)
        return token, plaintext

    def revoke(self, *, token, tenant, actor, target):
        """Revoke once (again is a no-op without a second audit row); returns the locked, updated row."""
        with transaction.atomic():
            token = self.model.objects.select_for_update().get(pk=token.pk)
            if token.revoked_at is None:
                token.revoked_at = timezone.now()
                token.save(update_fields=["revoked_at"])
                self.audit(tenant=tenant, actor=actor, action=f"{self.action}.revoked", target=target(token))
        self.cache.pop(token.token_hash, None)
        return token

    def authenticate(self, plaintext, *, now=None):
        """The live token for `plaintext`, or None; records when it was used, to the minute."""
        if not plaintext or not plaintext.startswith(self.prefix):
            return None
        now = now or timezone.now()
        digest = hash_secret(plaintext)
        if self.cache_seconds:
            hit = self.cache.get(digest)
            if hit is not None and (now - hit[1]).total_seconds() < self.cache_seconds:
                return hit[0]
        token = self.lookup(digest)
        if token is None:
            self.cache.pop(digest, None)
            return None
        if token.last_used_at is None or now - token.last_used_at > LAST_USED_RESOLUTION:
            self.model.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        if self.cache_seconds:
            self.cache[digest] = (token, now)
        return token
