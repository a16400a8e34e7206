"""Who may do what in which tenant: users, plans, tenants, members, invitations, API tokens, audit trail, outbox."""
import uuid

from django.conf import settings
from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.db.models.functions import Lower

from core.tokens import BearerToken


class UserManager(BaseUserManager):
    use_in_migrations = True

    def _create_user(self, email, password, **extra):
        if not email:
            raise ValueError("An email address is required.")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_user(self, email, password=None, **extra):
        extra.setdefault("is_staff", False)
        extra.setdefault("is_superuser", False)
        return self._create_user(email, password, **extra)

    def create_superuser(self, email, password=None, **extra):
        extra.update(is_staff=True, is_superuser=True)
        return self._create_user(email, password, **extra)


class User(AbstractUser):
    """A person; the email address is the identity (one account across tenants)."""

    username = None
    email = models.EmailField("email address", unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS = []
    objects = UserManager()

    def __str__(self):
        return self.email


class Plan(models.Model):
    """A tier and its allowances. `None` in an allowance means unlimited."""

    slug = models.SlugField(unique=True, max_length=40)
    name = models.CharField(max_length=80)
    monthly_price_cents = models.PositiveIntegerField(null=True, blank=True, help_text="Empty: custom pricing.")
    currency = models.CharField(max_length=3, default="usd")
    daily_minutes = models.PositiveIntegerField(null=True, blank=True, help_text="IDE minutes per day.")
    monthly_hours = models.PositiveIntegerField(null=True, blank=True, help_text="IDE hours per billing month.")
    storage_mb = models.PositiveIntegerField(null=True, blank=True)
    seats = models.PositiveIntegerField(null=True, blank=True, help_text="Members, invitations included.")
    max_concurrent_workspaces = models.PositiveIntegerField(null=True, blank=True)
    idle_timeout_minutes = models.PositiveIntegerField(default=15)
    max_session_hours = models.PositiveIntegerField(
        null=True, blank=True, default=12,
        help_text="The longest a workspace session runs, active or not; then it ends (reopen to go on). "
                  "Empty: no limit.")
    overage_price_cents_per_hour = models.PositiveIntegerField(
        null=True, blank=True, help_text="Empty: no paid overage; the session ends when the allowance runs out."
    )
    class InternetAccess(models.TextChoices):
        NONE = "none"
        PROXY = "proxy"  # HTTP(S) through the egress proxy's allow-list only (workspaces/egress_proxy.py)
        OPEN = "open"

    internet_access = models.CharField(
        max_length=8, choices=InternetAccess.choices, default=InternetAccess.PROXY,
        help_text="From a workspace: none, HTTP(S) through the egress proxy to allow-listed hosts "
                  "(EGRESS_PROXY_ALLOW), or open. Private ranges, the host and other workspaces are never reachable.",
    )
    # Fair shares on a shared host, applied to a container at its claim (docs/RUNTIME.md, "Resources per plan").
    cpu_weight = models.PositiveIntegerField(
        default=1024, help_text="Relative CPU share under contention (cgroup cpu.shares); 1024 is normal.")
    io_weight = models.PositiveSmallIntegerField(
        default=500, help_text="Relative block-I/O share, 10–1000 (needs an I/O scheduler with weights, e.g. BFQ).")
    cpus = models.DecimalField(max_digits=5, decimal_places=2, null=True, blank=True,
                               help_text="CPU quota cap in cores; empty: the template's.")
    memory_mb = models.PositiveIntegerField(null=True, blank=True, help_text="Memory cap; empty: the template's.")
    pids_limit = models.PositiveIntegerField(null=True, blank=True, help_text="Process cap; empty: the template's.")
    public = models.BooleanField(default=True, help_text="Offered in sign-up and the plans page.")
    sso_allowed = models.BooleanField(
        default=False, help_text="Its tenants may sign in through their own identity provider (sso app).")
    sort_order = models.PositiveSmallIntegerField(default=0)

    class Meta:
        ordering = ["sort_order", "slug"]

    def __str__(self):
        return self.name

    @property
    def allows_overage(self):
        return self.overage_price_cents_per_hour is not None


class Tenant(models.Model):
    """An organisation: the unit of isolation, billing and quotas."""

    class Status(models.TextChoices):
        ACTIVE = "active"
        SUSPENDED = "suspended"
        OFFBOARDED = "offboarded"

    slug = models.SlugField(unique=True, max_length=50)
    name = models.CharField(max_length=120)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE, db_index=True)
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="tenants")
    synthetic = models.BooleanField(default=False, help_text="Load tests and demos: excluded from revenue figures.")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="Membership", related_name="tenants")
    # The paid subscription that drives the plan, as billing last read it from Stripe (billing.subscriptions).
    subscription_id = models.CharField(max_length=255, blank=True, db_index=True)
    subscription_status = models.CharField(max_length=24, blank=True, help_text="Stripe's status; empty: none.")
    current_period_end = models.DateTimeField(null=True, blank=True)
    pending_plan = models.ForeignKey(
        Plan, on_delete=models.PROTECT, null=True, blank=True, related_name="+",
        help_text="A downgrade (or Free after a cancellation) that takes effect at the end of the period.")
    payment_due_by = models.DateTimeField(
        null=True, blank=True, help_text="Past due: opens are refused (402) from this moment until it is paid.")
    # Kept by the sso app's services: since when its members must sign in through its identity provider (no
    # password; API tokens only if created after an SSO sign-in and after this moment). Loaded with every API token.
    sso_enforced_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug

    @property
    def email(self):
        """Where Stripe sends receipts: the first owner's address (dj-stripe's subscriber model needs `email`)."""
        owner = self.memberships.filter(role=Role.OWNER).select_related("user").order_by("pk").first()
        return owner.user.email if owner else ""


class Role(models.TextChoices):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class Membership(models.Model):
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["created_at", "pk"]
        constraints = [models.UniqueConstraint(fields=["tenant", "user"], name="membership_unique_user_per_tenant")]

    def __str__(self):
        return f"{self.user} in {self.tenant} ({self.role})"


class Invitation(models.Model):
    """A single-use, expiring invitation; only a hash of its token is stored."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="invitations")
    email = models.EmailField()
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.MEMBER)
    token_hash = models.CharField(max_length=64, unique=True)
    invited_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    accepted_at = models.DateTimeField(null=True, blank=True)
    accepted_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # One open invitation per address and tenant.
            models.UniqueConstraint(
                Lower("email"),
                "tenant",
                condition=models.Q(accepted_at__isnull=True, revoked_at__isnull=True),
                name="invitation_one_pending_per_email",
            )
        ]

    def __str__(self):
        return f"{self.email} → {self.tenant}"

    @property
    def is_pending(self):
        return self.accepted_at is None and self.revoked_at is None


class ApiToken(BearerToken):
    """A personal API token: acts for one member of one tenant. Only its SHA-256 is stored."""

    membership = models.ForeignKey(Membership, on_delete=models.CASCADE, related_name="api_tokens")
    # When the session that created it signed in through the tenant's identity provider; None: by password.
    sso_login_at = models.DateTimeField(null=True, blank=True, editable=False)


class AuditLog(models.Model):
    """Append-only: every tenant, plan, member and money change, written in the same transaction."""

    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, blank=True, related_name="audit_log")
    # Kept when the tenant is gone (offboarding deletes it; the trail stays).
    tenant_slug = models.CharField(max_length=50, blank=True, db_index=True)
    # The tenant's primary key, also kept: a slug is reused after offboarding, a key never is.
    tenant_key = models.BigIntegerField(null=True, blank=True, db_index=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    actor_label = models.CharField(max_length=254, blank=True, help_text="Who acted, kept if the user is deleted.")
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=200, blank=True)
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return f"{self.created_at:%Y-%m-%d %H:%M} {self.tenant_slug} {self.action}"


class OutboxEvent(models.Model):
    """A domain event, written in the transaction that caused it and delivered to its consumers by Celery.

    Consumers (metering, billing providers, notifications) are registered in `tenants.events`; each
    delivery is recorded so a retried drain never delivers twice to the same consumer.
    """

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, blank=True, related_name="+")
    tenant_slug = models.CharField(max_length=50, blank=True)
    type = models.CharField(max_length=64, db_index=True)
    payload = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)
    delivered_to = models.JSONField(default=list, blank=True, help_text="Consumers that handled it.")
    dispatched_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True)

    class Meta:
        ordering = ["created_at"]
        indexes = [
            models.Index(
                fields=["created_at"], condition=models.Q(dispatched_at__isnull=True), name="outbox_pending_idx"
            )
        ]

    def __str__(self):
        return f"{self.type} {self.id}"


class TenantExport(models.Model):
    """The archive of an offboarded tenant's data, downloadable by its former owners."""

    tenant_slug = models.CharField(max_length=50, db_index=True)
    owners = models.ManyToManyField(settings.AUTH_USER_MODEL, related_name="tenant_exports")
    path = models.CharField(max_length=500)
    size_bytes = models.PositiveBigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self):
        return f"export of {self.tenant_slug} ({self.created_at:%Y-%m-%d})"
