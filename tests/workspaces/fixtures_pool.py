"""Fixtures for the pool, sessions and reconciler tests: a real engine, the tiny image, nodes, a tenant.

Imported explicitly by the test modules (`from tests.workspaces.fixtures_pool import *`) so they do not
collide with the runtime tests' fixtures.
"""
import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import require_service

REPO = Path(__file__).resolve().parents[2]
TINY_IMAGE = "hearth/tiny:1"

__all__ = ["engine", "tiny_image", "pool_env", "node", "tiny_template", "tenant_e", "member", "workspace",
           "restore_defaults", "live_db", "TINY_IMAGE", "engine_cleanup", "make_workspace"]


def restore_defaults():
    """Plans and templates: tests/conftest.py puts them back after each transactional test; this fills in
    what is still missing in a reused database."""
    from tests.conftest import seed_data_ensure

    seed_data_ensure()


def engine_cleanup(url=None):
    """Remove every container of this test instance on an engine (never another instance's)."""
    from workspaces.runtime import DockerRuntime

    runtime = DockerRuntime(url or settings.DOCKER_HOST, node_name="cleanup")
    try:
        for c in runtime.list(instance=settings.HEARTH_INSTANCE):
            runtime.remove(c.engine_id)
    finally:
        runtime.close()


@pytest.fixture(scope="session")
def engine(django_db_setup):
    from workspaces.runtime import DockerRuntime

    runtime = DockerRuntime(settings.DOCKER_HOST, node_name="main")
    require_service("The Docker engine", runtime.ping)
    yield runtime
    engine_cleanup()
    runtime.close()


@pytest.fixture(scope="session")
def tiny_image(engine):
    if not engine.image_exists(TINY_IMAGE):
        subprocess.run([str(REPO / "scripts/images/build-tiny.sh"), TINY_IMAGE], check=True, timeout=120,
                       env=dict(os.environ))
    return TINY_IMAGE


@pytest.fixture
def pool_env(settings, tiny_image):
    """A fresh slot root for the test; afterwards this instance's containers and every slot mount go."""
    from workspaces import storage
    from workspaces.runtime import docker as docker_runtime

    settings.WORKSPACES_READY_TIMEOUT = 10
    root = storage.slot_root()
    yield root
    urls = {settings.DOCKER_HOST}
    try:
        from workspaces.models import Node

        urls |= set(Node.objects.values_list("engine_url", flat=True))
    except Exception:
        pass
    for url in urls:
        try:
            engine_cleanup(url)
        except Exception:
            pass
    storage.slot_root_release(root)
    docker_runtime._runtimes.clear()
    from workspaces import network

    network.network_rules_remove(instance=settings.HEARTH_INSTANCE)  # installed again by the next test's runtime


@pytest.fixture
def live_db(transactional_db):
    """Committed transactions (threads, subprocesses); seed data filled in if an earlier flush removed it.

    Tasks enqueued here go to the shared Redis under this instance's key prefix (CELERY_BROKER_TRANSPORT_OPTIONS),
    so only a worker of this instance takes them.
    """
    restore_defaults()
    return transactional_db


@pytest.fixture
def node(db, pool_env):
    from workspaces.models import Node

    return Node.objects.create(name="main", engine_url=settings.DOCKER_HOST, cpus=64, memory_mb=64 * 1024,
                               max_containers=300)


@pytest.fixture
def tiny_template(db, tiny_image):
    from workspaces.models import WorkspaceTemplate

    restore_defaults()
    # Only the tiny image takes part: the real templates' images are slow (or not built) here.
    WorkspaceTemplate.objects.exclude(slug="tiny").update(enabled=False)
    return WorkspaceTemplate.objects.create(slug="tiny", name="Tiny", image=tiny_image, internal_port=8080,
                                            cpus="0.10", memory_mb=64, pids_limit=64, warm_min=2, warm_max=2,
                                            idle_timeout_minutes=30, max_containers=250)


@pytest.fixture
def tenant_e(db):
    """A tenant on the enterprise plan (no concurrency or time limits)."""
    from tenants.models import Plan
    from tests.factories import TenantFactory

    restore_defaults()
    return TenantFactory(plan=Plan.objects.get(slug="enterprise"))


@pytest.fixture
def member(tenant_e):
    from tests.factories import MembershipFactory

    return MembershipFactory(tenant=tenant_e, role="member")


@pytest.fixture
def make_workspace(tiny_template):
    from workspaces import services

    def make(membership, name="proj", template=None):
        return services.workspace_create(tenant=membership.tenant, owner=membership.user, name=name,
                                         template=template or tiny_template)

    return make


@pytest.fixture
def workspace(member, make_workspace):
    return make_workspace(member)
