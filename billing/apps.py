"""Billing: dj-stripe, subscriptions and their webhooks, the billing-event outbox and its providers."""
from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from billing.providers import provider_register
        from billing.providers.invoice import InvoiceProvider
        from billing.providers.stripe import StripeProvider
        from billing.subscriptions import plan_request, subscription_cancel_for_offboarding
        from billing.views import dashboard_card
        from tenants.offboarding import on_teardown
        from tenants.portal import dashboard_card as register_card
        from tenants.services import plan_request_handler

        plan_request_handler(plan_request)
        register_card("billing")(dashboard_card)
        on_teardown(subscription_cancel_for_offboarding)
        provider_register(StripeProvider())
        provider_register(InvoiceProvider())
