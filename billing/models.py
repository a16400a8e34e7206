"""Billing's records: accounts, billing events and their deliveries to providers, reported usage, invoices, and the
cost model's rates."""
from decimal import Decimal

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.core.validators import MinValueValidator
from django.db import models
from django.utils import timezone

from metering.models import Meter
from tenants.models import Tenant


class Provider(models.TextChoices):
    STRIPE = "stripe"
    INVOICE = "invoice"


class BillingAccount(models.Model):
    """How one tenant is billed: which providers receive its billing events, and its identities there."""

    tenant = models.OneToOneField(Tenant, on_delete=models.CASCADE, related_name="billing_account")
    providers = ArrayField(models.CharField(max_length=16, choices=Provider.choices), default=list, blank=True,
                           help_text="Both while moving a tenant from one provider to the other.")
    stripe_customer_id = models.CharField(max_length=255, blank=True)
    fixed_fee_cents = models.PositiveIntegerField(
        null=True, blank=True, help_text="A contract's monthly fee; empty: the plan's monthly price.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self):
        return f"{self.tenant} ({', '.join(self.providers) or 'no provider'})"


class BillingEvent(models.Model):
    """One billable fact, written in the transaction that caused it; delivered to each provider of the tenant."""

    class Kind(models.TextChoices):
        USAGE = "usage", "usage beyond the allowance"
        PLAN_FEE = "plan_fee", "the plan's fixed fee"

    # A money record: kept (by slug) when an offboarded tenant is deleted.
    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, related_name="+")
    tenant_slug = models.CharField(max_length=50)
    kind = models.CharField(max_length=16, choices=Kind.choices)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, null=True, blank=True, related_name="+")
    period_start = models.DateTimeField(help_text="The billing month (UTC) the fact belongs to.")
    quantity = models.BigIntegerField(help_text="In the meter's unit (seconds); 1 for a fee.")
    # What the month's billable quantity stands at after this event: providers that take running totals in other
    # units (Stripe's hours) round the totals, not the deltas, so the deltas add up exactly.
    cumulative = models.BigIntegerField(null=True, blank=True,
                                        help_text="Usage: the month's billable quantity after this event.")
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    # Stable: the same fact always gets the same identifier, so re-reporting it is a no-op and providers dedup it.
    identifier = models.CharField(max_length=100, unique=True)
    description = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-pk"]

    def __str__(self):
        return self.identifier


class Delivery(models.Model):
    """One billing event on its way to one provider: retried with back-off, dead-lettered after too many failures."""

    class State(models.TextChoices):
        PENDING = "pending"
        DELIVERED = "delivered"
        DEAD = "dead"

    event = models.ForeignKey(BillingEvent, on_delete=models.CASCADE, related_name="deliveries")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(default=timezone.now)
    last_error = models.TextField(blank=True)
    reference = models.CharField(max_length=255, blank=True, help_text="The provider's id for what it received.")
    delivered_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "deliveries"
        ordering = ["-created_at", "-pk"]
        permissions = [("retry_delivery", "Can retry a dead or waiting billing delivery")]
        constraints = [models.UniqueConstraint(fields=["event", "provider"], name="delivery_once_per_provider")]
        indexes = [
            models.Index(fields=["next_attempt_at", "id"], condition=models.Q(state="pending"),
                         name="delivery_pending_idx"),
            models.Index(fields=["state"], condition=models.Q(state="dead"), name="delivery_dead_idx"),
        ]

    def __str__(self):
        return f"{self.event.identifier} → {self.provider} ({self.state})"

    @property
    def idempotency_key(self):
        """The same on every attempt, in every process: a provider that saw it once answers the first result."""
        return f"hearth:{self.provider}:{self.event.identifier}"


class ReportedUsage(models.Model):
    """The watermark of a tenant's meter in a billing month: how much billable usage already became events."""

    tenant = models.ForeignKey(Tenant, on_delete=models.CASCADE, related_name="+")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    period_start = models.DateTimeField()
    quantity = models.BigIntegerField(default=0, help_text="Billable quantity reported so far (beyond allowance).")
    amount_cents = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "reported usage"
        ordering = ["tenant_id", "meter_id", "period_start"]
        constraints = [
            models.UniqueConstraint(fields=["tenant", "meter", "period_start"], name="reportedusage_key")
        ]

    def __str__(self):
        return f"{self.tenant_id} {self.meter_id} {self.period_start:%Y-%m}: {self.quantity}"


class InvoiceCounter(models.Model):
    """The last invoice number of a year: locked and incremented in the issuing transaction, so numbers have no gaps."""

    year = models.PositiveSmallIntegerField(primary_key=True)
    last_number = models.PositiveIntegerField(default=0)

    def __str__(self):
        return f"{self.year}: {self.last_number}"


class Invoice(models.Model):
    """Hearth's own monthly invoice (contracts paid by bank transfer): a draft collects lines until it is issued."""

    class Status(models.TextChoices):
        DRAFT = "draft"
        ISSUED = "issued"

    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, related_name="invoices")
    tenant_slug = models.CharField(max_length=50)
    tenant_name = models.CharField(max_length=120)
    period_start = models.DateTimeField(help_text="The billing month (UTC) it covers.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.DRAFT)
    year = models.PositiveSmallIntegerField(null=True, blank=True, help_text="Of issue; numbers restart each year.")
    sequence = models.PositiveIntegerField(null=True, blank=True)
    currency = models.CharField(max_length=3, default="usd")
    total_cents = models.BigIntegerField(default=0)
    issued_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-period_start", "-pk"]
        constraints = [
            models.UniqueConstraint(fields=["year", "sequence"], name="invoice_number_unique"),
            # One open draft per tenant and month; a line arriving after the month's invoice was issued opens a
            # supplementary one.
            models.UniqueConstraint(fields=["tenant", "period_start"], condition=models.Q(status="draft"),
                                    name="invoice_one_draft_per_period"),
            models.CheckConstraint(
                condition=models.Q(status="draft", sequence__isnull=True)
                | models.Q(status="issued", sequence__isnull=False, year__isnull=False),
                name="invoice_number_iff_issued",
            ),
        ]

    def __str__(self):
        return self.number or f"draft {self.tenant_slug} {self.period_start:%Y-%m}"

    @property
    def number(self):
        if self.sequence is None:
            return ""
        return f"{settings.BILLING_INVOICE_NUMBER_PREFIX}-{self.year}-{self.sequence:06d}"


class InvoiceLine(models.Model):
    """One billing event on an invoice; an event is on at most one invoice, which makes adding it idempotent."""

    invoice = models.ForeignKey(Invoice, on_delete=models.CASCADE, related_name="lines")
    event = models.OneToOneField(BillingEvent, on_delete=models.PROTECT, related_name="invoice_line")
    description = models.CharField(max_length=200)
    quantity = models.BigIntegerField()
    unit = models.CharField(max_length=32)
    amount_cents = models.BigIntegerField()

    class Meta:
        ordering = ["pk"]

    def __str__(self):
        return f"{self.invoice_id}: {self.description}"


class ReconciliationGap(models.Model):
    """A difference reconciliation found for one tenant, meter, billing month and provider (billing/reconciliation.py);
    each run of a month replaces that month's gaps."""

    class Kind(models.TextChoices):
        USED_NOT_REPORTED = "used_not_reported", "used but not reported"
        REPORTED_NOT_BILLED = "reported_not_billed", "reported but not billed"
        BILLED_NOT_METERED = "billed_not_metered", "billed but not metered"

    tenant = models.ForeignKey(Tenant, on_delete=models.SET_NULL, null=True, related_name="+")
    tenant_slug = models.CharField(max_length=50)
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="+")
    period_start = models.DateTimeField(help_text="The billing month (UTC).")
    provider = models.CharField(max_length=16, choices=Provider.choices)
    kind = models.CharField(max_length=24, choices=Kind.choices)
    quantity = models.BigIntegerField(help_text="In the meter's unit (seconds).")
    amount_cents = models.BigIntegerField()
    currency = models.CharField(max_length=3, default="usd")
    found_at = models.DateTimeField(default=timezone.now)
    resent_at = models.DateTimeField(null=True, blank=True, help_text="When staff re-sent it (fixed by the next run).")

    class Meta:
        ordering = ["-period_start", "tenant_slug", "meter_id", "provider", "kind"]
        permissions = [("resend_gap", "Can re-send what a reconciliation gap is missing")]
        indexes = [models.Index(fields=["period_start"], name="gap_period_idx")]

    def __str__(self):
        return f"{self.tenant_slug} {self.period_start:%Y-%m} {self.provider}: {self.get_kind_display()}"
NOT_NEGATIVE = [MinValueValidator(Decimal(0))]


def _price(verbose_name, *, default, places=6, help_text=""):
    """A non-negative amount of the rates' currency."""
    return models.DecimalField(max_digits=places + 8, decimal_places=places, default=Decimal(default),
                               validators=NOT_NEGATIVE, verbose_name=verbose_name, help_text=help_text)


class CostRates(models.Model):
    """What serving tenants costs Hearth: unit prices and monthly fixed costs, in one row staff edit in admin.

    Amounts are in `currency`'s major unit (dollars), as Decimals: unit prices are fractions of a cent.
    """

    SINGLETON = 1

    id = models.PositiveSmallIntegerField(primary_key=True, default=SINGLETON, editable=False)
    currency = models.CharField(max_length=3, default="usd")
    vcpu_second = _price("per vCPU-second", default="0.000024", places=10,
                         help_text="A container-second costs the plan's CPU limit × this.")
    memory_gb_second = _price("per GiB-second of memory", default="0", places=10,
                              help_text="A container-second costs the plan's memory limit (GiB) × this; "
                                        "0: memory is included in the vCPU price.")
    default_vcpus = models.DecimalField(
        max_digits=5, decimal_places=2, default=Decimal("1"), validators=NOT_NEGATIVE,
        verbose_name="vCPUs when the plan sets none",
        help_text="For plans without a CPU limit (their containers get the template's: 1 by default).")
    default_memory_mb = models.PositiveIntegerField(
        default=1024, verbose_name="memory (MiB) when the plan sets none",
        help_text="For plans without a memory limit (their containers get the template's: 1024 by default).")
    storage_gb_month = _price("per GiB-month of storage", default="0.30",
                              help_text="Storage is the mean of the month's daily peaks.")
    egress_gb = _price("per GiB of egress", default="0.12")
    warm_pool_month = _price("warm pool, per month", default="30.00", places=2,
                             help_text="The warm containers kept waiting for claims (two cost about 20–40 a month).")
    file_storage_month = _price("file storage, per month", default="0", places=2,
                                help_text="The storage host or volume, whatever tenants store.")
    database_month = _price("database, per month", default="0", places=2)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = "costs and margins"
        verbose_name_plural = "costs and margins"
        constraints = [models.CheckConstraint(condition=models.Q(id=1), name="costrates_singleton")]

    def __str__(self):
        return "Cost rates"

    @property
    def fixed_month(self):
        """The fixed costs of a month, shared by the tenants served in it."""
        return self.warm_pool_month + self.file_storage_month + self.database_month
