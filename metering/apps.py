"""Metering: usage events, roll-ups, quotas and entitlements."""
from django.apps import AppConfig


class MeteringConfig(AppConfig):
    name = "metering"
    verbose_name = "Metering"

    def ready(self):
        from metering import consumers, offboarding, schema  # noqa: F401  (registers outbox consumers, tenants hooks,
        # the OpenAPI scheme)
