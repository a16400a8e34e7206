"""Billing: dj-stripe, the billing-event outbox and its providers, reconciliation."""
from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from billing.providers import provider_register
        from billing.providers.invoice import InvoiceProvider
        from billing.providers.stripe import StripeProvider

        provider_register(StripeProvider())
        provider_register(InvoiceProvider())
