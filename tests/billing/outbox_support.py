"""Helpers and fixtures of the outbox tests: tenants billed by given providers, usage, the provider server."""
from datetime import UTC, datetime

import pytest
from django.db import transaction

from billing.models import BillingAccount
from metering.services import usage_record
from tenants.models import Plan
from tests.billing.provider_server import ProviderServer
from tests.factories import TenantFactory

HOUR = 3600


def tenant_billed_by(*providers, plan="pro", customer="cus_test", **tenant_fields):
    tenant = TenantFactory(plan=Plan.objects.get(slug=plan), **tenant_fields)
    BillingAccount.objects.create(tenant=tenant, providers=list(providers), stripe_customer_id=customer)
    return tenant


def workspace_time(tenant, seconds, *, at, event_id=None):
    """Record `seconds` of workspace time for the tenant at `at` through metering (roll-ups included)."""
    with transaction.atomic():
        return usage_record(tenant=tenant, meter="workspace_seconds", quantity=seconds, timestamp=at,
                            event_id=event_id or f"test:{tenant.pk}:{at.timestamp()}:{seconds}")


def utc(*args):
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def provider(settings):
    """The Stripe-shaped provider server; the Stripe provider talks to it."""
    server = ProviderServer().start()
    settings.STRIPE_API_BASE = server.url
    settings.STRIPE_TIMEOUT = 5
    yield server
    server.stop()
