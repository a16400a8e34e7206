"""Meters: the platform's meter slugs, declaring custom meters, and resolving a slug without a query per event."""
import time

from django.db import transaction
from django.utils.text import slugify

from metering.models import Meter
from tenants.audit import audit_record
from tenants.exceptions import NotFound, ServiceError

WORKSPACE_SECONDS = "workspace_seconds"
STORAGE_BYTES = "storage_bytes"
EGRESS_BYTES = "egress_bytes"
SEATS = "seats"


class _MeterCache:
    """slug -> (id, aggregation, active); reloaded when a slug is unknown (a meter declared since)."""

    ttl = 30.0  # seconds: a meter deactivated in admin refuses events within this long

    def __init__(self):
        self._by_slug = {}
        self._loaded_at = 0.0

    def get(self, slug):
        hit = self._by_slug.get(slug)
        if hit is None or time.monotonic() - self._loaded_at > self.ttl:
            self.reload()
            hit = self._by_slug.get(slug)
        return hit

    def forget(self):
        """The next lookup reads the table again (meters were re-created under new ids: a test's restored snapshot)."""
        self._loaded_at = float("-inf")

    def reload(self):
        from metering.selectors import meters_forget

        meters_forget()
        self._loaded_at = time.monotonic()
        self._by_slug = {
            slug: (pk, aggregation, active)
            for pk, slug, aggregation, active in Meter.objects.values_list("pk", "slug", "aggregation", "active")
        }


meter_cache = _MeterCache()


def meter_get(slug_or_meter):
    if isinstance(slug_or_meter, Meter):
        return slug_or_meter
    try:
        return Meter.objects.get(slug=slug_or_meter)
    except Meter.DoesNotExist:
        raise NotFound(f"There is no meter '{slug_or_meter}'.", code="unknown_meter") from None


def meter_declare(*, slug, name, unit, aggregation=Meter.Aggregation.SUM, billable=True,
                  declared_by=Meter.DeclaredBy.API, description="", actor=None):
    """Declare a custom meter (by a template or through the API); idempotent on slug if nothing differs."""
    if not slug or slugify(slug).replace("-", "_") != slug.replace("-", "_") or len(slug) > 64:
        raise ServiceError(f"'{slug}' is not a usable meter slug: use lower-case letters, digits, _ and -.",
                           field="slug")
    if aggregation not in Meter.Aggregation.values:
        raise ServiceError(f"Unknown aggregation '{aggregation}'. Use sum or max.", field="aggregation")
    with transaction.atomic():
        meter, created = Meter.objects.get_or_create(slug=slug, defaults=dict(
            name=name or slug, unit=unit or "units", aggregation=aggregation, billable=billable,
            declared_by=declared_by, description=description))
        if not created and meter.aggregation != aggregation:
            raise ServiceError(f"Meter '{slug}' exists with aggregation {meter.aggregation}.", code="meter_conflict")
        if created:
            audit_record(tenant=None, actor=actor, action="meter.declared", target=slug,
                         data={"unit": meter.unit, "aggregation": aggregation, "declared_by": declared_by})
    meter_cache.reload()
    return meter
