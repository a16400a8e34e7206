"""workspaces.services and workspaces.pool against the real Docker engine and PostgreSQL (tiny image)."""
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from django.utils import timezone

from tenants import services as tenant_services
from tenants.exceptions import Conflict, Forbidden, NotFound, ServiceError
from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, services, storage
from workspaces.models import Container, Node, Session
from workspaces.runtime import runtime_for

pytestmark = [pytest.mark.django_db, pytest.mark.docker]
State = Container.State


def _http_get(container, path):
    with urllib.request.urlopen(f"http://{container.address}{path}", timeout=5) as response:
        return response.read().decode()


def _engine_names(node):
    return {c.name for c in runtime_for(node).list(instance=node_instance())}


def node_instance():
    from django.conf import settings

    return settings.HEARTH_INSTANCE


def test_pool_fill_keeps_the_warm_minimum_per_node(node, tiny_template):
    assert pool.pool_fill() == 2
    warm = list(Container.objects.filter(state=State.WARM))
    assert len(warm) == 2
    assert {c.name for c in warm} <= _engine_names(node)
    assert all(_http_get(c, "/healthz").strip() == "ok" for c in warm)
    assert pool.pool_fill() == 0  # already at target


def test_open_claims_warm_binds_storage_and_close_removes_the_container(node, tiny_template, workspace, member):
    pool.pool_fill()
    user = member.user
    Path(workspace.storage_path).mkdir(parents=True, exist_ok=True)
    (Path(workspace.storage_path) / "notes.txt").write_text("mine")

    opened = services.workspace_open(workspace=workspace, user=user)
    session = opened.session
    container = Container.objects.get(pk=session.container_id)
    assert container.state == State.CLAIMED and not session.cold_start
    # The business dashboards' open latency: recorded with the claim, a warm one in well under a second.
    assert Session.objects.get(pk=session.pk).open_ms is not None and session.open_ms < 1000
    assert workspace.host_key in opened.url and opened.token and opened.expires_at > timezone.now()
    assert _http_get(container, "/home/notes.txt") == "mine"
    assert Container.objects.filter(state=State.WARM).count() == 1
    assert Session.objects.get(pk=session.pk).user_id == user.pk

    # The user writes through the container's view; it lands in their directory.
    assert storage.is_mount_point(Path(container.slot_path))

    services.session_close(session=session, actor=user)
    session.refresh_from_db()
    container.refresh_from_db()
    assert session.ended_at is not None and session.end_reason == "closed"
    assert container.state == State.REMOVED
    assert container.name not in _engine_names(node)
    assert not Path(container.slot_path).exists()
    assert (Path(workspace.storage_path) / "notes.txt").read_text() == "mine"

    # The next session gets another container, with the same files.
    again = services.workspace_open(workspace=workspace, user=user).session
    assert again.container_id != container.pk
    assert _http_get(Container.objects.get(pk=again.container_id), "/home/notes.txt") == "mine"


def test_open_twice_resumes_the_same_session(node, tiny_template, workspace, member):
    pool.pool_fill()
    first = services.workspace_open(workspace=workspace, user=member.user)
    second = services.workspace_open(workspace=workspace, user=member.user)
    assert second.resumed and second.session.pk == first.session.pk
    assert Session.objects.filter(ended_at__isnull=True).count() == 1
    assert storage.is_mount_point(Path(first.session.container.slot_path))


def test_open_does_not_resume_a_session_whose_container_stopped(node, tiny_template, workspace, member):
    """An engine restart stops every container, and the next one it starts may get the old one's address: a resume
    there would route the user to another session's container (found by the chaos suite). The session is lost and
    the open gets a new container."""
    pool.pool_fill()
    first = services.workspace_open(workspace=workspace, user=member.user).session
    runtime_for(node).api.stop(first.container.engine_id, timeout=1)  # what a dockerd restart does to it

    again = services.workspace_open(workspace=workspace, user=member.user)
    assert not again.resumed and again.session.container_id != first.container_id
    first.refresh_from_db()
    assert first.ended_at is not None and first.end_reason == Session.EndReason.LOST
    assert _http_get(Container.objects.get(pk=again.session.container_id), "/healthz").strip() == "ok"


def test_empty_pool_falls_back_to_a_cold_start(node, tiny_template, workspace, member):
    assert Container.objects.count() == 0
    opened = services.workspace_open(workspace=workspace, user=member.user)
    container = Container.objects.get(pk=opened.session.container_id)
    assert opened.session.cold_start and container.state == State.CLAIMED
    assert _http_get(container, "/healthz").strip() == "ok"
    # The open waited for the container's start: its latency (recorded) includes it.
    assert Session.objects.get(pk=opened.session.pk).open_ms == opened.session.open_ms
    assert opened.session.open_ms >= (container.ready_at - container.created_at).total_seconds() * 1000 - 5


def test_storage_of_user_a_is_not_in_user_b_container(node, tiny_template, tenant_e, make_workspace):
    a, b = MembershipFactory(tenant=tenant_e), MembershipFactory(tenant=tenant_e)
    wa, wb = make_workspace(a, "a"), make_workspace(b, "b")
    pool.pool_fill()
    Path(wa.storage_path).mkdir(parents=True, exist_ok=True)
    (Path(wa.storage_path) / "secret.txt").write_text("a's")
    services.workspace_open(workspace=wa, user=a.user)
    sb = services.workspace_open(workspace=wb, user=b.user).session
    with pytest.raises(urllib.error.HTTPError):
        _http_get(Container.objects.get(pk=sb.container_id), "/home/secret.txt")


def test_idle_sessions_are_reclaimed_and_active_ones_metered(node, tiny_template, tenant_e, make_workspace):
    a, b = MembershipFactory(tenant=tenant_e), MembershipFactory(tenant=tenant_e)
    pool.pool_fill()
    idle = services.workspace_open(workspace=make_workspace(a, "a"), user=a.user).session
    busy = services.workspace_open(workspace=make_workspace(b, "b"), user=b.user).session
    Session.objects.filter(pk=idle.pk).update(last_activity_at=timezone.now() - timedelta(minutes=31))
    services.session_touch(session=busy, user=b.user)

    assert services.sessions_reclaim() == 1
    idle.refresh_from_db()
    busy.refresh_from_db()
    assert idle.end_reason == "idle" and idle.ended_at is not None
    assert Container.objects.get(pk=idle.container_id).state == State.REMOVED
    assert busy.ended_at is None and busy.metered_until > busy.started_at


def test_plan_idle_timeout_applies_when_shorter(node, tiny_template, workspace, member):
    plan = member.tenant.plan
    plan.idle_timeout_minutes = 5
    plan.save()
    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    Session.objects.filter(pk=session.pk).update(last_activity_at=timezone.now() - timedelta(minutes=6))
    assert services.sessions_reclaim() == 1


def test_suspension_ends_sessions_and_blocks_opening(node, tiny_template, workspace, member):
    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    owner = MembershipFactory(tenant=member.tenant, role="owner").user
    tenant_services.tenant_suspend(tenant=member.tenant, actor=owner, reason="unpaid")
    session.refresh_from_db()
    assert session.end_reason == "suspended"
    assert Container.objects.get(pk=session.container_id).state == State.REMOVED
    with pytest.raises(Forbidden, match="suspended") as exc:
        services.workspace_open(workspace=workspace, user=member.user)
    assert exc.value.code == "tenant_suspended"
    assert Session.objects.filter(ended_at__isnull=True).count() == 0


def test_paused_pool_refuses_opens_and_refills(node, tiny_template, workspace, member):
    services.pool_pause(template=tiny_template, paused=True, actor="staff")
    with pytest.raises(Conflict, match="paused") as exc:
        services.workspace_open(workspace=workspace, user=member.user)
    assert exc.value.code == "pool_paused"
    assert pool.pool_fill() == 0
    assert not Container.objects.exists() and not Session.objects.exists()


def test_unknown_and_disabled_templates(node, tiny_template, member):
    with pytest.raises(ServiceError, match="Unknown template 'nope'") as exc:
        services.workspace_create(tenant=member.tenant, owner=member.user, name="x", template="nope")
    assert exc.value.code == "unknown_template"
    tiny_template.enabled = False
    tiny_template.save()
    with pytest.raises(ServiceError, match="disabled"):
        services.workspace_create(tenant=member.tenant, owner=member.user, name="x", template="tiny")


def test_opening_a_workspace_of_a_disabled_template_is_refused(node, tiny_template, workspace, member):
    tiny_template.enabled = False
    tiny_template.save()
    with pytest.raises(Conflict, match="disabled"):
        services.workspace_open(workspace=workspace, user=member.user)


def test_other_tenants_and_other_members_cannot_open(node, tiny_template, workspace, member):
    stranger = MembershipFactory()  # another tenant
    with pytest.raises(NotFound):
        services.workspace_open(workspace=workspace, user=stranger.user)
    colleague = MembershipFactory(tenant=member.tenant)
    with pytest.raises(NotFound):
        services.workspace_open(workspace=workspace, user=colleague.user)
    admin = MembershipFactory(tenant=member.tenant, role="admin")
    with pytest.raises(Forbidden, match="owner"):
        services.workspace_open(workspace=workspace, user=admin.user)
    assert not Session.objects.exists()


def test_a_node_that_does_not_answer_is_a_clear_error_and_leaves_nothing(pool_env, tiny_template, workspace, member,
                                                                        tmp_path):
    Node.objects.create(name="dead", engine_url=f"unix://{tmp_path}/no-such-docker.sock", cpus=8, memory_mb=8192)
    with pytest.raises(pool.NodeUnavailable, match="does not answer") as exc:
        services.workspace_open(workspace=workspace, user=member.user)
    assert exc.value.status_code == 503
    assert not Container.objects.filter(state__in=Container.ACTIVE_STATES).exists()
    assert not Session.objects.exists()
    assert list(storage.slot_root().iterdir()) == []
    assert pool.pool_fill() == 0
    assert "cannot talk to the Docker engine" in Node.objects.get(name="dead").last_error


def test_delete_needs_confirmation_then_removes_files(node, tiny_template, workspace, member):
    pool.pool_fill()
    Path(workspace.storage_path).mkdir(parents=True, exist_ok=True)
    (Path(workspace.storage_path) / "f").write_text("x")
    session = services.workspace_open(workspace=workspace, user=member.user).session
    with pytest.raises(ServiceError, match="confirm"):
        services.workspace_delete(workspace=workspace, actor=member.user, confirm="wrong")
    services.workspace_delete(workspace=workspace, actor=member.user, confirm=workspace.name)
    session.refresh_from_db()
    assert session.end_reason == "deleted"
    assert not Path(workspace.storage_path).exists()
    with pytest.raises(NotFound):
        services.workspace_open(workspace=workspace, user=member.user)


def test_a_missing_image_is_a_clear_error_and_leaves_nothing(node, tiny_template, workspace, member):
    tiny_template.image = "hearth/no-such-image:0"
    tiny_template.save()
    with pytest.raises(pool.ProvisionFailed, match="Could not start a 'tiny' container") as exc:
        services.workspace_open(workspace=workspace, user=member.user)
    assert exc.value.status_code == 503
    assert "image not found" not in exc.value.message  # the engine's words are for staff, on the container row
    assert not Container.objects.filter(state__in=Container.ACTIVE_STATES).exists()
    assert Container.objects.get().state == State.FAILED
    assert "image not found" in Container.objects.get().last_error
    assert not Session.objects.exists()
    assert _engine_names(node) == set()
    assert list(storage.slot_root().iterdir()) == []
    assert pool.pool_fill() == 0  # backs off after the failure instead of retrying every tick


def test_offboarding_ends_sessions_exports_workspaces_and_deletes_them(node, tiny_template, workspace, member):
    import json
    import tarfile

    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    owner = MembershipFactory(tenant=member.tenant, role="owner").user
    export = tenant_services.tenant_offboard(tenant=member.tenant, actor=owner)
    assert Container.objects.get(pk=session.container_id).state == State.REMOVED
    assert not Session.objects.filter(pk=session.pk).exists()  # deleted with the tenant
    with tarfile.open(export.path) as tar:
        data = json.load(tar.extractfile(f"{member.tenant.slug}/tenant.json"))
    assert data["workspaces"][0]["name"] == workspace.name
    assert data["workspaces"][0]["sessions"][0]["end_reason"] == "suspended"


def test_session_reaching_the_daily_allowance_is_ended_metered_exactly_to_it(node, tiny_template, make_workspace):
    """Free plan, 30 min/day: a session running for 31 minutes is ended at the reclaim tick and metered 1,800 s."""
    from datetime import UTC, datetime

    import time_machine

    from metering.exceptions import QuotaExceeded
    from metering.selectors import workspace_allowance
    from tenants.models import Plan
    from tests.factories import TenantFactory
    from tests.workspaces.fixtures_pool import restore_defaults

    restore_defaults()
    with time_machine.travel(datetime(2026, 11, 20, 12, 0, tzinfo=UTC), tick=True):
        owner = MembershipFactory(tenant=TenantFactory(plan=Plan.objects.get(slug="free")), role="owner")
        workspace = make_workspace(owner, "quota")
        pool.pool_fill()
        session = services.workspace_open(workspace=workspace, user=owner.user).session
        started = timezone.now() - timedelta(minutes=31)
        Session.objects.filter(pk=session.pk).update(started_at=started, metered_until=None,
                                                     last_activity_at=timezone.now())

        assert services.sessions_reclaim() == 1
        session.refresh_from_db()
        assert session.end_reason == "quota"
        assert session.metered_until == started + timedelta(seconds=1800)
        assert workspace_allowance(tenant=owner.tenant)["day"]["used"] == 1800
        with pytest.raises(QuotaExceeded):
            services.workspace_open(workspace=workspace, user=owner.user)


def test_quota_limit_with_parallel_sessions():
    t0 = timezone.now()
    # One session: the limit is its mark plus what is left.
    assert services.quota_limit_at([t0], 60) == t0 + timedelta(seconds=60)
    # Two sessions from the same mark use the allowance twice as fast.
    assert services.quota_limit_at([t0, t0], 60) == t0 + timedelta(seconds=30)
    # The second starts 40 s later: 40 s alone, then 2 × 10 s together.
    assert services.quota_limit_at([t0, t0 + timedelta(seconds=40)], 60) == t0 + timedelta(seconds=50)
    # Nothing left: the limit is the earliest mark.
    assert services.quota_limit_at([t0 + timedelta(seconds=5), t0], 0) == t0
