"""Metering's records: meters, append-only usage events, their roll-ups per period, notices sent, service tokens."""
from django.conf import settings
from django.db import models
from django.db.models.functions import Now

from core.tokens import BearerToken
from tenants.models import Tenant


class Meter(models.Model):
    """Something counted per tenant: seconds, bytes, seats, tokens. Declared by the platform, a template or the API."""

    class Aggregation(models.TextChoices):
        SUM = "sum", "sum (counter)"
        MAX = "max", "max (sampled gauge: the period's peak; the latest sample is kept too)"

    class DeclaredBy(models.TextChoices):
        PLATFORM = "platform"
        TEMPLATE = "template"
        API = "api"

    slug = models.SlugField(unique=True, max_length=64)
    name = models.CharField(max_length=120)
    unit = models.CharField(max_length=32, help_text="seconds, bytes, members, tokens…")
    aggregation = models.CharField(max_length=8, choices=Aggregation.choices, default=Aggregation.SUM)
    billable = models.BooleanField(default=True)
    declared_by = models.CharField(max_length=16, choices=DeclaredBy.choices, default=DeclaredBy.PLATFORM)
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True, help_text="Inactive meters refuse new events.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.slug


class UsageEvent(models.Model):
    """One fact, never updated or deleted; `event_id` makes recording it idempotent."""

    class Source(models.TextChoices):
        INTERNAL = "internal"
        API = "api"
        CORRECTION = "correction"

    # On PostgreSQL the column has the "C" collation (migration 0004): memcmp comparisons, faster ingestion. Unique
    # by a constraint (Meta), not unique=True, which would add a second, varchar_pattern_ops index that every
    # insert maintains and nothing reads (lookups are exact; "C" serves prefix LIKE from the unique index too).
    event_id = models.CharField(max_length=128)
    # Kept (by slug) after an offboarded tenant is deleted: usage is a money record. No database-level foreign
    # keys on this table: a constraint check per inserted row halves ingestion, and ingestion resolves tenants
    # and meters itself (the teardown hook clears tenant ids before a tenant is deleted).
    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, related_name="+", db_index=False,
                               db_constraint=False)
    tenant_slug = models.CharField(max_length=50)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False)
    # Seconds, bytes, members and tokens are whole numbers; only corrections may be negative.
    quantity = models.BigIntegerField()
    subject = models.JSONField(default=dict, blank=True, help_text="user, workspace, session…")
    timestamp = models.DateTimeField(help_text="When the usage happened.")
    recorded_at = models.DateTimeField(db_default=Now())
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.INTERNAL)
    reason = models.TextField(blank=True, help_text="Corrections: why.")
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                              related_name="+", db_index=False, db_constraint=False,
                              help_text="Corrections: the staff member.")

    class Meta:
        ordering = ["-timestamp", "-pk"]
        constraints = [
            # The name PostgreSQL gave the column's former UNIQUE: the same index, kept (migration 0005).
            models.UniqueConstraint(fields=["event_id"], name="metering_usageevent_event_id_key"),
        ]
        # No index by tenant: every read of usage goes through the roll-ups, and each index on this table costs
        # every ingested event an index entry (a tenant's events are found by scanning, e.g. when it is deleted).

    def __str__(self):
        return f"{self.tenant_slug} {self.meter_id} {self.quantity} @ {self.timestamp:%Y-%m-%d %H:%M:%S}"


class UsageRollup(models.Model):
    """The total of one meter for one tenant in one period, kept up to date in the events' transaction."""

    class Period(models.TextChoices):
        DAY = "day"
        MONTH = "month"

    # No database-level foreign keys, as on events: every roll-up update would check them (an extra fetch of the
    # row per update in the ingestion statement); Django still cascades and protects, and ingestion resolves both.
    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+", db_index=False, db_constraint=False)
    period = models.CharField(max_length=8, choices=Period.choices)
    period_start = models.DateTimeField()
    # Copied from the meter so the UPSERT needs no join; a meter's aggregation never changes.
    aggregation = models.CharField(max_length=8, choices=Meter.Aggregation.choices)
    quantity = models.BigIntegerField(default=0)
    event_count = models.BigIntegerField(default=0)
    last_quantity = models.BigIntegerField(null=True, blank=True, help_text="Gauges: the latest sample.")
    last_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(db_default=Now())

    class Meta:
        ordering = ["tenant_id", "meter_id", "period", "period_start"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "meter", "period", "period_start"], name="usagerollup_key")
        ]
        indexes = [models.Index(fields=["period", "period_start"], name="usagerollup_period_idx")]

    def __str__(self):
        return f"{self.tenant_id} {self.meter_id} {self.period} {self.period_start:%Y-%m-%d}: {self.quantity}"


class UsageNotice(models.Model):
    """A threshold event already emitted for a tenant, meter and period, so it is emitted once."""

    class Kind(models.TextChoices):
        THRESHOLD_80 = "usage.threshold_80"
        THRESHOLD_100 = "usage.threshold_100"
        OVERAGE_STARTED = "usage.overage_started"

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.CASCADE, related_name="+")
    period = models.CharField(max_length=8, choices=UsageRollup.Period.choices)
    period_start = models.DateTimeField()
    kind = models.CharField(max_length=32, choices=Kind.choices)
    used = models.BigIntegerField()
    included = models.BigIntegerField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "meter", "period", "period_start", "kind"],
                                    name="usagenotice_once")
        ]

    def __str__(self):
        return f"{self.tenant_id} {self.kind} {self.meter_id} {self.period_start:%Y-%m-%d}"


class TenantMeteringSettings(models.Model):
    """Per-tenant metering options; without a row the tenant's day is the UTC day."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="metering_settings")
    timezone = models.CharField(max_length=64, default="UTC",
                                help_text="IANA name; daily allowances reset at midnight here.")

    class Meta:
        verbose_name_plural = "tenant metering settings"

    def __str__(self):
        return f"{self.tenant_id}: {self.timezone}"


class ServiceToken(BearerToken):
    """A credential for the platform's other services (e.g. the AI builder's gateway) to send usage events."""

    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True,
                                   related_name="+")
