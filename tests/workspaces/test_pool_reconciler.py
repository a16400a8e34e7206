"""The reconciler: orphans, lost containers, stuck provisioning, unfinished releases, stale slots;
recovery after SIGKILL of a Celery worker mid-provision and after a dockerd restart (slow)."""
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.fixtures_pool import REPO
from workspaces import pool, services, storage
from workspaces.models import Container
from workspaces.runtime import ContainerSpec, runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]
State = Container.State


def _engine_pks(node):
    return {c.labels.get("hearth.container") for c in runtime_for(node).list(instance=settings.HEARTH_INSTANCE)}


def test_orphan_engine_container_is_removed(node, tiny_template):
    slot = storage.slot_create("orphan")
    runtime = runtime_for(node)
    orphan = runtime.create(ContainerSpec(
        name=f"hearth-{settings.HEARTH_INSTANCE}-orphan", image=tiny_template.image, internal_port=8080, cpus=0.1,
        memory_mb=64, pids_limit=64, environment={}, slot_path=str(slot),
        labels={"hearth.instance": settings.HEARTH_INSTANCE, "hearth.node": node.name, "hearth.template": "tiny",
                "hearth.container": "987654"}))
    report = services.reconcile()
    assert report["orphans_removed"] == 1
    assert runtime.inspect(orphan.engine_id) is None


def test_missing_containers_are_lost_their_sessions_end_and_the_pool_refills(node, tiny_template, workspace, member):
    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    claimed = Container.objects.get(pk=session.container_id)
    warm = Container.objects.get(state=State.WARM)
    runtime = runtime_for(node)
    runtime.remove(claimed.engine_id)
    runtime.api.stop(warm.engine_id, timeout=0)  # stopped counts as missing too

    report = services.reconcile()
    assert report["lost"] == 2 and report["sessions_ended"] == 1
    session.refresh_from_db()
    assert session.end_reason == "lost" and session.ended_at is not None
    assert set(Container.objects.filter(pk__in=[claimed.pk, warm.pk]).values_list("state", flat=True)) == {"lost"}
    assert runtime.inspect(warm.engine_id) is None
    assert not Path(claimed.slot_path).exists() and not Path(warm.slot_path).exists()
    assert pool.pool_fill() == 2
    assert Container.objects.filter(state=State.WARM).count() == 2


def test_stuck_provisioning_is_failed_and_its_container_removed(node, tiny_template, settings):
    # A worker died after creating the engine container but before marking it WARM.
    container = pool._reserve(template=tiny_template, node=node, for_warm=True)
    pool._start(container)
    assert str(container.pk) in _engine_pks(node)
    assert services.reconcile()["failed"] == 0  # young: another worker may still be on it
    Container.objects.filter(pk=container.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.WORKSPACES_PROVISION_TIMEOUT + 1))
    assert services.reconcile()["failed"] == 1
    container.refresh_from_db()
    assert container.state == State.FAILED
    assert str(container.pk) not in _engine_pks(node)
    assert not Path(container.slot_path).exists()


def test_unfinished_release_is_finished(node, tiny_template):
    pool.pool_fill()
    container = Container.objects.filter(state=State.WARM).first()
    Container.objects.filter(pk=container.pk).update(state=State.RELEASING)
    assert services.reconcile()["released"] == 1
    container.refresh_from_db()
    assert container.state == State.REMOVED and str(container.pk) not in _engine_pks(node)


def test_stale_slots_are_unbound_and_removed(node, tiny_template, tmp_path):
    user_dir = tmp_path / "someone"
    slot = storage.slot_create("c424242")
    storage.slot_bind(slot=slot, source=user_dir)
    (user_dir / "keep.txt").write_text("x")
    assert services.reconcile()["slots_removed"] == 1
    assert not slot.exists()
    assert (user_dir / "keep.txt").read_text() == "x"


def test_killed_between_claim_and_bind_resumes_on_the_next_open(node, tiny_template, workspace, member):
    pool.pool_fill()
    # The claim transaction committed, then the process died before binding storage.
    half = services._claim(workspace=workspace, user=member.user)
    container = Container.objects.get(pk=half.container_id)
    assert not storage.is_mount_point(Path(container.slot_path))
    opened = services.workspace_open(workspace=workspace, user=member.user)
    assert opened.resumed and opened.session.pk == half.pk
    assert storage.is_mount_point(Path(container.slot_path))


def _start_worker(env):
    return subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-c", "1", "--without-heartbeat",
         "--without-gossip", "--without-mingle", "-l", "INFO"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.mark.slow
def test_worker_killed_mid_provision_recovers_to_target_within_60s(live_db, node, tiny_template, settings):
    from django.db import connection

    from config.celery import app

    settings.WORKSPACES_PROVISION_TIMEOUT = 8
    # Port 9 answers nothing: the worker's provisioning waits for readiness until it is killed.
    tiny_template.internal_port = 9
    tiny_template.save()
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.base",
           "DATABASE_URL": _db_url(connection), "STORAGE_ROOT": str(settings.STORAGE_ROOT),
           "WORKSPACES_READY_TIMEOUT": "120"}
    worker = _start_worker(env)
    try:
        app.send_task("workspaces.tasks.pool_fill", kwargs={"template_id": tiny_template.pk})
        deadline = time.monotonic() + 60
        while not Container.objects.filter(state=State.PROVISIONING).exclude(engine_id="").exists():
            assert worker.poll() is None, worker.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the worker never started provisioning"
            time.sleep(0.1)
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait()
    # The worker starts the pool's missing containers side by side: every one of them is stuck.
    stuck = list(Container.objects.filter(state=State.PROVISIONING))
    assert stuck and any(str(row.pk) in _engine_pks(node) for row in stuck)

    tiny_template.internal_port = 8080
    tiny_template.save()
    killed_at = time.monotonic()
    while Container.objects.filter(state=State.WARM).count() < tiny_template.warm_target:
        assert time.monotonic() - killed_at < 60, "the pool did not recover within 60 s"
        services.reconcile()  # what the beat's reconcile tick runs
        pool.pool_fill()
        time.sleep(1)
    for row in stuck:
        row.refresh_from_db()
        assert row.state == State.FAILED
        assert str(row.pk) not in _engine_pks(node)
        assert not Path(row.slot_path).exists()
    assert _engine_pks(node) == {str(pk) for pk in Container.objects.filter(state=State.WARM).values_list("pk",
                                                                                                          flat=True)}


def _db_url(connection):
    params = connection.settings_dict
    return f"postgres://{params['USER']}@{params['HOST']}:{params['PORT'] or 5432}/{params['NAME']}"


def _dockerd_restart():
    """Restart the shared dockerd the way scripts/services.sh starts it, and wait until it answers."""
    pid = int(Path("/var/run/docker.pid").read_text().strip())
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while Path(f"/proc/{pid}").exists():
        assert time.monotonic() < deadline, "dockerd did not stop"
        time.sleep(0.2)
    subprocess.Popen("nohup dockerd >>/var/log/hearth-dockerd.log 2>&1 &", shell=True, start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "dockerd did not come back"
        time.sleep(0.2)


@pytest.mark.slow
def test_dockerd_restart_recovers_to_target_within_60s(node, tiny_template, workspace, member):
    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    before = set(Container.objects.filter(state__in=(State.WARM, State.CLAIMED)).values_list("pk", flat=True))
    _dockerd_restart()
    restarted_at = time.monotonic()
    from workspaces.runtime import docker as docker_runtime

    docker_runtime._runtimes.clear()  # a restarted engine: new connections
    while Container.objects.filter(state=State.WARM).count() < tiny_template.warm_target:
        assert time.monotonic() - restarted_at < 60, "the pool did not recover within 60 s"
        services.reconcile()
        pool.pool_fill()
        time.sleep(0.5)
    session.refresh_from_db()
    assert session.end_reason == "lost"
    assert set(Container.objects.filter(pk__in=before).values_list("state", flat=True)) == {"lost"}
    assert _engine_pks(node) == {str(pk) for pk in Container.objects.filter(state=State.WARM).values_list("pk",
                                                                                                          flat=True)}
    # The user opens again and gets a fresh container.
    again = services.workspace_open(workspace=workspace, user=member.user).session
    assert again.container_id not in before
