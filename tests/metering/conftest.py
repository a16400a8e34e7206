"""Fixtures of the metering tests: tenants on each plan, service tokens, ingestion clients."""
import pytest
from rest_framework.test import APIClient

from metering.tokens import service_token_create
from tests.conftest import seed_data_ensure
from tests.factories import MembershipFactory, TenantFactory


def _reference_models():
    """Rows a transactional test's flush removes (or recreates with new keys) that later tests rely on."""
    from django.contrib.auth.models import Permission
    from django.contrib.contenttypes.models import ContentType
    from django.contrib.sites.models import Site

    from metering.models import Meter
    from tenants.models import Plan

    return [ContentType, Permission, Site, Plan, Meter]  # parents before children


def _reference_snapshot():
    return {model: list(model.objects.order_by("pk").values()) for model in _reference_models()}


def _load_reference_data(snapshot=None):
    """Plans and meters come from data migrations, and a transactional test's flush removes them.

    After a flush they are put back with their primary keys from before it (content types and permissions too,
    which the flush recreates with new keys), so that a later test restoring a serialized database
    (serialized_rollback) finds the same rows instead of colliding with new ones.
    """
    from metering.meters import meter_cache

    if snapshot:
        changed = [model for model, rows in snapshot.items()
                   if rows and sorted(model.objects.values_list("pk", flat=True)) != [row["id"] for row in rows]]
        for model in reversed(changed):
            model.objects.all().delete()
        for model in changed:
            model.objects.bulk_create([model(**row) for row in snapshot[model]])
    seed_data_ensure()
    from django.contrib.contenttypes.models import ContentType

    ContentType.objects.clear_cache()
    meter_cache.reload()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """After a transactional test's flush, put the plans and meters back for the tests (and runs) that follow."""
    yield
    snapshot = getattr(item, "_reference_snapshot", None)
    if snapshot is None:
        return
    from pytest_django.plugin import blocking_manager_key

    with item.config.stash[blocking_manager_key].unblock():
        _load_reference_data(snapshot)


@pytest.fixture(autouse=True)
def _reference_data(request):
    marker = request.node.get_closest_marker("django_db")
    if marker is None:
        return
    transactional = marker.kwargs.get("transaction")
    request.getfixturevalue("transactional_db" if transactional else "db")
    from metering.periods import zone_forget

    zone_forget()  # the zone cache outlives a test's rollback: an earlier test's zone must not leak
    _load_reference_data()
    if transactional:
        request.node._reference_snapshot = _reference_snapshot()


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
    # The meters the tests send (no_such_meter is never declared: unknown_meter); the platform's own are Hearth's
    # alone. Tests of the scope make their own tokens.
    _, plaintext = service_token_create(name="test service",
                                        meters=["ai_builder_tokens", "web_builder_deploys", "no_such_meter"])
    return plaintext


@pytest.fixture
def service_client(service_token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_token}")
    return client


@pytest.fixture
def raw_service_client(service_token):
    """An ingestion client that shows a server error as a 500 response rather than raising it in the test."""
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {service_token}")
    return client
