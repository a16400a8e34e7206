"""Billing: dj-stripe, subscriptions and their webhooks, the billing-event outbox and its providers."""
from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing"

    def ready(self):
        from djstripe import signals as djstripe_signals

        from billing import metrics as billing_metrics
        from billing import webhooks
        from billing.providers import provider_register
        from billing.providers.invoice import InvoiceProvider
        from billing.providers.stripe import StripeProvider
        from billing.subscriptions import plan_request, subscription_cancel_for_offboarding
        from billing.views import dashboard_card
        from core.metrics import collector_register
        from tenants.offboarding import on_teardown
        from tenants.portal import dashboard_card as register_card
        from tenants.services import plan_request_handler

        plan_request_handler(plan_request)
        register_card("billing")(dashboard_card)
        on_teardown(subscription_cancel_for_offboarding)
        provider_register(StripeProvider())
        provider_register(InvoiceProvider())
        collector_register("billing_outbox", billing_metrics.OutboxCollector())
        billing_metrics.series_at_zero()
        # dj-stripe's only hook into its webhook processing (billing.webhooks says how the two are used).
        djstripe_signals.webhook_pre_process.connect(webhooks.webhook_pre_process, dispatch_uid="hearth-pre")
        djstripe_signals.webhook_post_process.connect(webhooks.webhook_post_process, dispatch_uid="hearth-post")
