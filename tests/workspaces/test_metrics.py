"""The workspaces' figures on /metrics move when the real thing happens: warm claims and a cold start on the real
engine, a session closed, an orphan the reconciler removes, the pool by state and the nodes' health."""
import pytest
from django.conf import settings

from tests.metrics_support import scrape
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, reconciler, services, storage
from workspaces.models import Container, Node
from workspaces.runtime import ContainerSpec, runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def test_claims_a_cold_start_and_the_pool_by_state(node, tiny_template, member, make_workspace, redis_url):
    pool.pool_fill()  # warm_min 2
    before = scrape()
    assert before.value("hearth_pool_containers", template="tiny", state="warm") == 2.0
    assert before.value("hearth_pool_warm_target", template="tiny") == 2.0
    warm_before = before.value("hearth_claim_duration_seconds_count", template="tiny", outcome="warm")
    cold_before = before.value("hearth_cold_starts_total", template="tiny")

    for name in ("one", "two"):
        services.workspace_open(workspace=make_workspace(member, name=name), user=member.user)
    # The refill is a task no worker takes here: the third open finds the pool empty and starts its own container.
    services.workspace_open(workspace=make_workspace(member, name="three"), user=member.user)

    after = scrape()
    assert after.value("hearth_claim_duration_seconds_count", template="tiny", outcome="warm") == warm_before + 2
    assert after.value("hearth_claim_duration_seconds_count", template="tiny", outcome="empty") >= 1
    assert after.value("hearth_cold_starts_total", template="tiny") == cold_before + 1
    # One statement on loopback: well under the 0.25 s bucket, counted in it.
    assert after.value("hearth_claim_duration_seconds_bucket", template="tiny", outcome="warm", le="0.25") >= \
        warm_before + 2
    assert after.value("hearth_pool_containers", template="tiny", state="warm") == 0.0
    assert after.value("hearth_pool_containers", template="tiny", state="claimed") == 3.0


def test_a_closed_session_is_a_reclaim_counted_once_it_commits(node, tiny_template, workspace, member, redis_url,
                                                              django_capture_on_commit_callbacks):
    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    before = scrape().value("hearth_reclaims_total", reason="closed")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.session_close(session=session, actor=member.user)
    assert scrape().value("hearth_reclaims_total", reason="closed") == before  # not before the commit
    for callback in callbacks:
        callback()
    assert scrape().value("hearth_reclaims_total", reason="closed") == before + 1


def test_a_reconciler_fix_and_its_last_pass(node, tiny_template, redis_url):
    slot = storage.slot_create("metrics-orphan")
    runtime_for(node).create(ContainerSpec(
        name=f"hearth-{settings.HEARTH_INSTANCE}-metrics-orphan", image=tiny_template.image, internal_port=8080,
        cpus=0.1, memory_mb=64, pids_limit=64, environment={}, slot_path=str(slot),
        labels={"hearth.instance": settings.HEARTH_INSTANCE, "hearth.node": node.name, "hearth.template": "tiny",
                "hearth.container": "987650"}))
    before = scrape()
    assert reconciler.reconcile()["orphans_removed"] == 1
    after = scrape()
    assert after.value("hearth_reconciler_fixes_total", kind="orphans_removed") == \
        before.value("hearth_reconciler_fixes_total", kind="orphans_removed") + 1
    assert after.value("hearth_reconciler_last_success_timestamp_seconds") > \
        before.value("hearth_reconciler_last_success_timestamp_seconds")


def test_an_unhealthy_node_reads_0(db, redis_url, settings):
    Node.objects.create(name="metrics-ok", engine_url="unix:///nonexistent/a.sock")
    Node.objects.create(name="metrics-down", engine_url="unix:///nonexistent/b.sock",
                        failed_calls=settings.WORKSPACES_NODE_FAILED_CALLS)
    result = scrape()
    assert result.value("hearth_node_healthy", node="metrics-ok", default=None) == 1.0
    assert result.value("hearth_node_healthy", node="metrics-down", default=None) == 0.0


def test_a_disabled_template_wants_no_warm_container(db, tiny_template, redis_url):
    tiny_template.enabled = False
    tiny_template.save(update_fields=["enabled"])
    result = scrape()
    assert result.value("hearth_pool_warm_target", template="tiny", default=None) == 0.0
    assert result.value("hearth_pool_containers", template="tiny", state="warm", default=None) == 0.0
    assert Container.objects.filter(template=tiny_template).count() == 0
