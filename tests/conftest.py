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

# The runtime/storage fixtures (tiny image, Docker runtimes, a second dockerd, slots) for any workspaces test.
pytest_plugins = ["tests.workspaces.fixtures_runtime"]
