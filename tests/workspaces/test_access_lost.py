"""A removed member, a deactivated user and a deleted user lose their running workspace at once: the session ends,
metered to the moment, and its route is gone from the real gateway; a deleted user's files go with them.

Real HAProxy (the gateway's own fixtures), real tiny containers, real PostgreSQL.
"""
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model

from metering.models import UsageEvent
from tenants import services as tenant_services
from tenants.models import AuditLog, Plan
from tests.factories import MembershipFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway, gateway_env  # noqa: F401
from workspaces import pool, services, storage
from workspaces.models import Session

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]


def _open(gateway, workspace, user):  # noqa: F811
    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=user)
    page = gateway.get(workspace.host_key, "/", token=opened.token)
    assert page.status_code == 200 and "hearth tiny workspace" in page.text
    time.sleep(1.1)  # a second of use to meter
    return opened


def _seconds_events(session):
    return list(UsageEvent.objects.filter(meter__slug="workspace_seconds", subject__session=str(session.pk)))


def _assert_cut_and_metered_once(gateway, workspace, opened, started):  # noqa: F811
    session = Session.objects.get(pk=opened.session.pk)
    assert session.ended_at is not None and session.ended_at - started < timedelta(seconds=5)
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code >= 400
    events = _seconds_events(session)
    assert sum(e.quantity for e in events) == pytest.approx(
        (session.ended_at - session.started_at).total_seconds(), abs=1)
    assert session.metered_until == session.ended_at


def test_a_removed_member_loses_the_running_workspace_at_once(gateway, workspace, member, node, tiny_template,  # noqa: F811
                                                              django_capture_on_commit_callbacks):
    from django.utils import timezone

    owner = MembershipFactory(tenant=member.tenant, role="owner")
    opened = _open(gateway, workspace, member.user)
    started = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.member_remove(membership=member, actor=owner.user)
    _assert_cut_and_metered_once(gateway, workspace, opened, started)
    # The reclaim tick that used to do this finds nothing more to end or meter.
    before = len(_seconds_events(opened.session))
    services.sessions_reclaim()
    assert len(_seconds_events(opened.session)) == before


def test_a_deactivated_user_loses_the_running_workspace_at_once(gateway, workspace, member, node, tiny_template,  # noqa: F811
                                                                django_capture_on_commit_callbacks):
    from django.utils import timezone

    staff = get_user_model().objects.create_user(email="staff@example.com", password="x", is_staff=True)
    opened = _open(gateway, workspace, member.user)
    started = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.user_deactivate(user=member.user, actor=staff)
    _assert_cut_and_metered_once(gateway, workspace, opened, started)
    member.user.refresh_from_db()
    assert not member.user.is_active
    assert AuditLog.objects.filter(tenant=member.tenant, action="user.deactivated", target=member.user.email,
                                   actor=staff).count() == 1


def test_deleting_a_user_ends_and_meters_their_sessions_and_deletes_their_files(
        gateway, workspace, member, node, tiny_template, django_capture_on_commit_callbacks):  # noqa: F811
    staff = get_user_model().objects.create_user(email="staff@example.com", password="x", is_staff=True)
    files = Path(workspace.storage_path)
    files.mkdir(parents=True, exist_ok=True)
    (files / "notes.txt").write_text("mine")
    member.tenant.plan = Plan.objects.get(slug="free")  # 100 MB: the user's directory is a volume of its own
    member.tenant.save(update_fields=["plan"])
    opened = _open(gateway, workspace, member.user)
    image = storage.volume_image_path(files.parent)
    assert storage.is_mount_point(files.parent) and image.exists()  # the plan's size-limited volume
    user_pk, tenant = member.user.pk, member.tenant
    with django_capture_on_commit_callbacks(execute=True):
        tenant_services.user_delete(user=member.user, actor=staff)

    assert not get_user_model().objects.filter(pk=user_pk).exists()
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code >= 400
    assert not files.exists() and not files.parent.exists()
    assert not image.exists() and not storage.is_mount_point(files.parent)  # the volume went with them
    # The money record stays: the seconds up to the end, metered once, after the session row went with the user.
    events = _seconds_events(opened.session)
    assert len(events) >= 1 and sum(e.quantity for e in events) >= 1
    assert events[0].tenant_id == tenant.pk
    actions = set(AuditLog.objects.filter(tenant=tenant).values_list("action", flat=True))
    assert {"session.ended", "user.deactivated", "workspace.deleted", "user.deleted"} <= actions
