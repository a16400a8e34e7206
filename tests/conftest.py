"""Shared fixtures: services the suite needs (required under CI=true), users, tenants, API clients."""
import os

import pytest
from rest_framework.test import APIClient

from tests.factories import MembershipFactory, TenantFactory, UserFactory

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require_service(name, check):
    """Run `check()`; if the service is missing, fail under CI and skip elsewhere."""
    try:
        check()
    except Exception as exc:  # any failure to reach the service means it is missing
        message = f"{name} is not available: {type(exc).__name__}: {exc}. `make test` starts it."
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def redis_url():
    import redis
    from django.conf import settings

    require_service("Redis", lambda: redis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=1).ping())
    return settings.REDIS_URL


@pytest.fixture(scope="session")
def docker_client():
    import docker
    from django.conf import settings

    client = docker.DockerClient(base_url=settings.DOCKER_HOST, timeout=30)
    require_service("The Docker engine", client.ping)
    yield client
    client.close()


@pytest.fixture(autouse=True)
def _isolated_paths(settings, tmp_path):
    settings.STORAGE_ROOT = tmp_path / "storage"
    settings.EXPORT_ROOT = tmp_path / "exports"


@pytest.fixture
def user(db):
    return UserFactory()


@pytest.fixture
def tenant(db):
    return TenantFactory()


@pytest.fixture
def owner(tenant):
    return MembershipFactory(tenant=tenant, role="owner").user


def api_client_for(membership):
    from tenants.services import api_token_create

    _, plaintext = api_token_create(membership=membership, name="test", actor=membership.user)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    return client


@pytest.fixture
def make_api_client(db):
    return api_client_for


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker):
    """Make sure the default plans (a data migration) exist, even in a reused test database.

    A transactional test (live_server, Chromium) flushes every table when it ends, so a reused database can
    come back without them. They are reloaded here and the snapshot that `serialized_rollback=True`
    restores is taken again: transactional tests should use
    `@pytest.mark.django_db(transaction=True, serialized_rollback=True)` so the tests after them still
    find the plans.
    """
    import importlib

    from django.apps import apps
    from django.db import connection

    with django_db_blocker.unblock():
        importlib.import_module("tenants.migrations.0002_default_plans").load(apps, None)
        if hasattr(connection, "_test_serialized_contents"):
            connection._test_serialized_contents = connection.creation.serialize_db_to_string()
