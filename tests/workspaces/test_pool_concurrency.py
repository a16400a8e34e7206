"""Concurrent claims never hand one container to two sessions (committed transactions, a connection per thread)."""
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.db import connection

from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import claiming, pool, services, storage
from workspaces.models import Container, Session, Workspace

pytestmark = [pytest.mark.docker]
State = Container.State

# PostgreSQL here allows 100 connections, shared by every engineer's tests: 40 threads, each its own
# connection, run the 200 claims (5 each) all at once behind a barrier.
THREADS = 40
CLAIMS = 200
WARM = 150


def test_200_concurrent_claims_never_double_assign(live_db, node, tiny_template, tenant_e):
    Container.objects.bulk_create(
        [Container(node=node, template=tiny_template, state=State.WARM, engine_id=f"fake{i}", name=f"fake-{i}")
         for i in range(WARM)]
    )
    members = [MembershipFactory(tenant=tenant_e) for _ in range(CLAIMS)]
    workspaces = Workspace.objects.bulk_create(
        [Workspace(tenant=tenant_e, owner=m.user, template=tiny_template, name="w") for m in members]
    )
    jobs = list(zip(workspaces, [m.user for m in members], strict=True))
    barrier = threading.Barrier(THREADS)

    def run(chunk):
        barrier.wait()
        try:
            return [claiming.session_claim(workspace=w, user=u) for w, u in chunk]
        finally:
            connection.close()

    with ThreadPoolExecutor(THREADS) as executor:
        results = [s for chunk in executor.map(run, [jobs[i::THREADS] for i in range(THREADS)]) for s in chunk]

    sessions = [s for s in results if s is not None]
    assert len(sessions) == WARM and results.count(None) == CLAIMS - WARM
    assert len({s.container_id for s in sessions}) == WARM
    assert Container.objects.filter(state=State.CLAIMED).count() == WARM
    assert Container.objects.filter(state=State.WARM).count() == 0
    assert Session.objects.filter(ended_at__isnull=True).count() == WARM
    assert Session.objects.values("container").distinct().count() == WARM


def test_concurrent_opens_against_real_containers(live_db, node, tiny_template, tenant_e, make_workspace):
    tiny_template.warm_min = tiny_template.warm_max = 4
    tiny_template.save()
    assert pool.pool_fill() == 4
    members = [MembershipFactory(tenant=tenant_e) for _ in range(6)]
    workspaces = [make_workspace(m, f"w{i}") for i, m in enumerate(members)]
    barrier = threading.Barrier(len(members))

    def open_one(job):
        workspace, user = job
        barrier.wait()
        try:
            return services.workspace_open(workspace=workspace, user=user).session
        finally:
            connection.close()

    with ThreadPoolExecutor(len(members)) as executor:
        sessions = list(executor.map(open_one, zip(workspaces, [m.user for m in members], strict=True)))
    assert len({s.container_id for s in sessions}) == 6
    assert sorted(s.cold_start for s in sessions) == [False] * 4 + [True] * 2
    for session in sessions:
        container = Container.objects.get(pk=session.container_id)
        assert container.state == State.CLAIMED
        assert storage.is_mount_point(Path(container.slot_path))
