"""Fixtures of the metering tests: tenants on each plan, service tokens, an ingestion client."""
import pytest
from rest_framework.test import APIClient

from metering.services import service_token_create
from tests.factories import MembershipFactory, TenantFactory


def _load_reference_data():
    """Plans and meters come from data migrations; a transactional test's flush removes them, so reload them."""
    from importlib import import_module

    from django.apps import apps

    from metering.models import Meter
    from tenants.models import Plan

    if not Plan.objects.exists():
        import_module("tenants.migrations.0002_default_plans").load(apps, None)
    if not Meter.objects.exists():
        import_module("metering.migrations.0002_default_meters").load(apps, None)
    from metering.services import meter_cache

    meter_cache.reload()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a transactional test's flush, put the plans and meters back for the tests (and runs) that follow."""
    yield
    marker = item.get_closest_marker("django_db")
    if marker is None or not marker.kwargs.get("transaction"):
        return
    from pytest_django.plugin import blocking_manager_key

    with item.config.stash[blocking_manager_key].unblock():
        _load_reference_data()


@pytest.fixture(autouse=True)
def _reference_data(request):
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    request.getfixturevalue("transactional_db" if marker.kwargs.get("transaction") else "db")
    _load_reference_data()


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
