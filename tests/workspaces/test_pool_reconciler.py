"""The reconciler, one rule at a time, on states set up in this process: orphans, lost containers, stuck
provisioning, unfinished releases, stale slots. The real crashes (SIGKILLed worker and open/close processes, a
restarted dockerd) are in test_pool_crash.py."""
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.utils import timezone

from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import claiming, pool, reconciler, services, storage
from workspaces.models import Container
from workspaces.pool import provisioning, refill
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
    report = reconciler.reconcile()
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

    report = reconciler.reconcile()
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
    container = provisioning._reserve(template=tiny_template, node=node, for_warm=True)
    provisioning._start(container)
    assert str(container.pk) in _engine_pks(node)
    assert reconciler.reconcile()["failed"] == 0  # young: another worker may still be on it
    Container.objects.filter(pk=container.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.WORKSPACES_PROVISION_TIMEOUT + 1))
    assert reconciler.reconcile()["failed"] == 1
    container.refresh_from_db()
    assert container.state == State.FAILED
    assert str(container.pk) not in _engine_pks(node)
    assert not Path(container.slot_path).exists()
    provisioning._provisioner_unlock(container.pk)  # what container_provision does when it returns


def test_provisioning_whose_process_died_is_failed_at_once_but_a_started_cold_one_is_not(node, tiny_template):
    # The provisioner's advisory lock is held from the row's commit; a process that dies loses it (the SIGKILL
    # itself is in test_pool_crash.py), simulated here by releasing it.
    cold = provisioning._reserve(template=tiny_template, node=node, for_warm=False)
    Container.objects.filter(pk=cold.pk).update(ready_at=timezone.now())  # started, about to be claimed
    dead = provisioning._reserve(template=tiny_template, node=node, for_warm=True)
    provisioning._start(dead)
    assert reconciler.reconcile()["failed"] == 0  # both provisioners alive
    provisioning._provisioner_unlock(dead.pk)
    provisioning._provisioner_unlock(cold.pk)
    assert reconciler.reconcile()["failed"] == 1
    dead.refresh_from_db()
    cold.refresh_from_db()
    assert dead.state == State.FAILED and dead.last_error == provisioning._PROVISIONER_DIED
    assert str(dead.pk) not in _engine_pks(node)
    assert cold.state == State.PROVISIONING  # its cold start claims it next, within milliseconds
    assert not refill._failing_recently(tiny_template, node)  # the newest row died with its process: no back-off
    Container.objects.filter(pk=cold.pk).update(ready_at=timezone.now() - provisioning._COLD_CLAIM_GRACE)
    assert reconciler.reconcile()["failed"] == 1  # ... so unclaimed this long, its process is gone
    cold.refresh_from_db()
    assert cold.state == State.FAILED


def test_unfinished_release_is_finished(node, tiny_template):
    pool.pool_fill()
    container = Container.objects.filter(state=State.WARM).first()
    Container.objects.filter(pk=container.pk).update(state=State.RELEASING)
    assert reconciler.reconcile()["released"] == 1
    container.refresh_from_db()
    assert container.state == State.REMOVED and str(container.pk) not in _engine_pks(node)


def test_stale_slots_are_unbound_and_removed(node, tiny_template, tmp_path):
    user_dir = tmp_path / "someone"
    slot = storage.slot_create("c424242")
    storage.slot_bind(slot=slot, source=user_dir)
    (user_dir / "keep.txt").write_text("x")
    assert reconciler.reconcile()["slots_removed"] == 1
    assert not slot.exists()
    assert (user_dir / "keep.txt").read_text() == "x"


def test_killed_between_claim_and_bind_resumes_on_the_next_open(node, tiny_template, workspace, member):
    pool.pool_fill()
    # The claim transaction committed, then the process died before binding storage.
    half = claiming.session_claim(workspace=workspace, user=member.user)
    container = Container.objects.get(pk=half.container_id)
    assert not storage.is_mount_point(Path(container.slot_path))
    opened = services.workspace_open(workspace=workspace, user=member.user)
    assert opened.resumed and opened.session.pk == half.pk
    assert storage.is_mount_point(Path(container.slot_path))
