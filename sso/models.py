"""Single sign-on: each tenant's identity providers (OIDC or SAML), the email domains that route to them, the IdP
accounts linked to Hearth users, the SAML assertions already used, and what the IdP's directory provisions over
SCIM (its token, users and groups)."""
import uuid

from django.conf import settings
from django.db import models
from django.db.models.functions import Lower

from core.tokens import BearerToken
from tenants.models import Role, Tenant

DEFAULT_OIDC_SCOPES = "openid email profile"
# Where each value is read in the IdP's claims (OIDC) or attributes (SAML), unless claim_mapping says otherwise.
DEFAULT_CLAIMS = {"email": "email", "email_verified": "email_verified", "name": "name", "given_name": "given_name",
                  "family_name": "family_name", "groups": "groups"}
# Where each value is read in a SAML assertion's attributes, unless attribute_mapping says otherwise. The address
# may also be the NameID when its format is emailAddress.
SAML_ATTRIBUTES = {"email": "email", "name": "name", "given_name": "given_name", "family_name": "family_name",
                   "groups": "groups"}


class IdentityProvider(models.Model):
    """A tenant's identity provider. Logins route to it by the verified domains of the email address."""

    class Kind(models.TextChoices):
        OIDC = "oidc", "OpenID Connect"
        SAML = "saml", "SAML 2.0"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="identity_providers")
    kind = models.CharField(max_length=8, choices=Kind.choices, default=Kind.OIDC)
    # --- OIDC
    issuer = models.URLField(max_length=500, blank=True,
                             help_text="The issuer (or its /.well-known/openid-configuration URL).")
    client_id = models.CharField(max_length=255, blank=True)
    client_secret_encrypted = models.TextField(blank=True, editable=False,
                                               help_text="Fernet token (sso.encryption); never shown.")
    scopes = models.CharField(max_length=300, default=DEFAULT_OIDC_SCOPES)
    claim_mapping = models.JSONField(default=dict, blank=True,
                                     help_text=f"Hearth's name → the IdP's claim; defaults: {DEFAULT_CLAIMS}.")
    # --- SAML (sso/saml.py, sso/saml_config.py)
    metadata_url = models.URLField(max_length=500, blank=True,
                                   help_text="The IdP's metadata URL (read at sign-in, cached), or paste its XML.")
    metadata_xml = models.TextField(blank=True)
    entity_id = models.CharField(max_length=500, blank=True,
                                 help_text="The IdP's entity id; read from its metadata when it holds one IdP.")
    attribute_mapping = models.JSONField(default=dict, blank=True,
                                         help_text=f"Hearth's name → the IdP's attribute; defaults: {SAML_ATTRIBUTES}.")
    # Hearth's own key pair as the service provider of this IdP, made with it (sso.saml_config.sp_keypair_generate).
    sp_certificate = models.TextField(blank=True, editable=False, help_text="PEM; published in Hearth's metadata.")
    sp_private_key_encrypted = models.TextField(blank=True, editable=False,
                                                help_text="Fernet token (sso.encryption); never shown.")
    # --- membership
    default_role = models.CharField(max_length=16, choices=[(r, r) for r in (Role.MEMBER, Role.ADMIN)],
                                    default=Role.MEMBER)
    group_roles = models.JSONField(default=dict, blank=True,
                                   help_text='IdP group → role, e.g. {"platform-admins": "admin"}.')
    enforce_sso = models.BooleanField(default=False,
                                      help_text="The tenant's members cannot use a password (once a domain is "
                                                "verified).")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "pk"]

    def __str__(self):
        return f"{self.tenant.slug}: {self.get_kind_display()} {self.issuer or self.entity_id or self.metadata_url}"


class SsoDomain(models.Model):
    """An email domain routed to an identity provider once verified. Several tenants may claim a domain; only one
    can verify it (a partial unique index), so nobody captures another company's logins."""

    identity_provider = models.ForeignKey(IdentityProvider, on_delete=models.CASCADE, related_name="domains")
    domain = models.CharField(max_length=253)
    verification_token = models.CharField(max_length=64, editable=False)
    verified_at = models.DateTimeField(null=True, blank=True, editable=False)
    verified_by = models.CharField(max_length=254, blank=True, editable=False, help_text="dns, or who verified it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["domain"]
        constraints = [
            models.UniqueConstraint(Lower("domain"), "identity_provider", name="sso_domain_unique_per_idp"),
            models.UniqueConstraint(Lower("domain"), condition=models.Q(verified_at__isnull=False),
                                    name="sso_domain_verified_once"),
        ]

    def __str__(self):
        return self.domain

    @property
    def txt_record(self):
        """The TXT record the tenant publishes at the domain to prove it owns it."""
        return f"hearth-verification={self.verification_token}"


class SsoIdentity(models.Model):
    """An account at an identity provider (its stable `sub`) linked to a Hearth user."""

    identity_provider = models.ForeignKey(IdentityProvider, on_delete=models.CASCADE, related_name="identities")
    subject = models.CharField(max_length=255)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="sso_identities")
    first_login_at = models.DateTimeField(auto_now_add=True)
    last_login_at = models.DateTimeField()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["identity_provider", "subject"], name="sso_identity_unique")]

    def __str__(self):
        return f"{self.subject} at {self.identity_provider_id} → {self.user_id}"


class SamlAssertion(models.Model):
    """A SAML assertion already used to sign in, kept until it expires, so that it can never be used again
    (sso.saml_replay)."""

    identity_provider = models.ForeignKey(IdentityProvider, on_delete=models.CASCADE, related_name="+")
    assertion_id = models.CharField(max_length=255)
    not_on_or_after = models.DateTimeField()
    used_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["identity_provider", "assertion_id"],
                                               name="sso_saml_assertion_once")]
        indexes = [models.Index(fields=["not_on_or_after"], name="sso_saml_assertion_expiry")]

    def __str__(self):
        return f"{self.assertion_id} at {self.identity_provider_id}"


# --- SCIM 2.0 (sso/scim.py, sso/scim_api.py) ---------------------------------------------------------------------


class ScimToken(BearerToken):
    """The bearer token an identity provider's directory uses on /scim/v2/ (`hsc_…`): it acts for that provider's
    tenant. One live token per provider; a rotation revokes the old one. Only the SHA-256 is stored."""

    identity_provider = models.ForeignKey(IdentityProvider, on_delete=models.CASCADE, related_name="scim_tokens")

    class Meta(BearerToken.Meta):
        constraints = [models.UniqueConstraint(fields=["identity_provider"], condition=models.Q(revoked_at=None),
                                               name="scim_token_one_live_per_idp")]


class ScimUser(models.Model):
    """A user as the directory provisioned it: active means a membership of the tenant; inactive (or deleted) means
    none. The SCIM `id` is this row's uuid, never the user's key."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    identity_provider = models.ForeignKey(IdentityProvider, on_delete=models.CASCADE, related_name="scim_users")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="scim_users")
    user_name = models.CharField(max_length=254, help_text="SCIM userName: the user's email address.")
    external_id = models.CharField(max_length=255, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [
            models.UniqueConstraint(fields=["identity_provider", "user"], name="scim_user_unique_user"),
            models.UniqueConstraint(Lower("user_name"), "identity_provider", name="scim_user_unique_user_name"),
        ]

    def __str__(self):
        return f"{self.user_name} ({'active' if self.active else 'inactive'})"


class ScimGroup(models.Model):
    """A directory group; its displayName maps to a role through the provider's `group_roles`."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    identity_provider = models.ForeignKey(IdentityProvider, on_delete=models.CASCADE, related_name="scim_groups")
    display_name = models.CharField(max_length=255)
    external_id = models.CharField(max_length=255, blank=True)
    members = models.ManyToManyField(ScimUser, related_name="groups", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(Lower("display_name"), "identity_provider",
                                               name="scim_group_unique_display_name")]

    def __str__(self):
        return self.display_name
