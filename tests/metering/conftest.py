"""Fixtures of the metering tests: tenants on each plan, service tokens, an ingestion client."""
import pytest
from rest_framework.test import APIClient

from metering.services import service_token_create
from tests.factories import MembershipFactory, TenantFactory


@pytest.fixture
def free_tenant(db):
    tenant = tenant_on("free")
    MembershipFactory(tenant=tenant, role="owner")
    return tenant


def tenant_on(plan_slug):
    from tenants.models import Plan

    return TenantFactory(plan=Plan.objects.get(slug=plan_slug))


@pytest.fixture
def service_token(db):
    _, plaintext = service_token_create(name="test service")
    return plaintext


@pytest.fixture
def service_client(service_token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_token}")
    return client
