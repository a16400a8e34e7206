"""Capacity limits on sessions (issue 12): the plan's longest session, and a tenant's fair share of a node.

Real tiny containers on the shared engine, real PostgreSQL.
"""
from datetime import timedelta

import pytest
from django.utils import timezone

from metering.models import UsageEvent
from tests.factories import MembershipFactory, TenantFactory
from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, services
from workspaces.models import Container, Session

pytestmark = [pytest.mark.django_db, pytest.mark.docker]


def _seconds_metered(session):
    return sum(UsageEvent.objects.filter(subject__session=str(session.pk)).values_list("quantity", flat=True))


# --- the longest session ------------------------------------------------------------------------------------------


def test_a_session_past_the_plans_longest_ends_even_when_active_metered_to_that_moment(member, workspace, node,
                                                                                       tiny_template):
    plan = member.tenant.plan
    plan.max_session_hours = 12
    plan.save()
    pool.pool_fill()
    session = services.workspace_open(workspace=workspace, user=member.user).session
    started = timezone.now() - timedelta(hours=12, minutes=5)
    # Active a moment ago (say, keep-alives from a tab left open), and metered up to its start only.
    Session.objects.filter(pk=session.pk).update(started_at=started, metered_until=started,
                                                 last_activity_at=timezone.now())

    assert services.sessions_reclaim() == 1
    session.refresh_from_db()
    assert session.end_reason == "max_length"
    assert session.metered_until == started + timedelta(hours=12)
    assert _seconds_metered(session) == 12 * 3600
    assert Container.objects.get(pk=session.container_id).state == Container.State.REMOVED


def test_a_session_under_the_limit_or_without_one_goes_on(member, tenant_e, make_workspace, node, tiny_template):
    plan = tenant_e.plan
    plan.max_session_hours = 12
    plan.save()
    pool.pool_fill()
    young = services.workspace_open(workspace=make_workspace(member, "young"), user=member.user).session
    Session.objects.filter(pk=young.pk).update(started_at=timezone.now() - timedelta(hours=11, minutes=59))
    assert services.sessions_reclaim() == 0

    plan.max_session_hours = None
    plan.save()
    Session.objects.filter(pk=young.pk).update(started_at=timezone.now() - timedelta(days=3))
    assert services.sessions_reclaim() == 0
    young.refresh_from_db()
    assert young.ended_at is None


# --- fair share of a node -----------------------------------------------------------------------------------------


def test_a_tenant_stops_at_its_share_of_a_node_and_others_still_open(settings, node, tiny_template, tenant_e,
                                                                       make_workspace, make_api_client):
    settings.WORKSPACES_TENANT_NODE_SHARE = 0.5
    node.max_containers = 6  # the tenant may hold 3
    node.save()
    pool.pool_fill()
    heavy = MembershipFactory(tenant=tenant_e)
    for name in ("a", "b", "c"):
        services.workspace_open(workspace=make_workspace(heavy, name), user=heavy.user)
    pool.pool_fill()
    assert Container.objects.filter(node=node, state=Container.State.WARM).exists()  # there is room, just not for it

    fourth = make_workspace(heavy, "d")
    response = make_api_client(heavy).post(f"/api/v1/workspaces/{fourth.pk}/open")
    assert response.status_code == 409, response.content
    body = response.json()
    assert body["code"] == "fair_share" and "50%" in body["detail"]
    assert not Session.objects.filter(workspace=fourth).exists()

    other = MembershipFactory(tenant=TenantFactory(plan=tenant_e.plan))
    services.workspace_open(workspace=make_workspace(other, "theirs"), user=other.user)

    settings.WORKSPACES_TENANT_NODE_SHARE = 1.0  # off
    assert make_api_client(heavy).post(f"/api/v1/workspaces/{fourth.pk}/open").status_code == 200


def test_placement_sends_a_tenant_at_its_share_to_another_node(settings, tiny_template, tenant_e):
    """Rows only (no engine is asked): the tenant holds 2 of main's 4; placement offers only `spare`."""
    from workspaces.models import Node, Workspace
    from workspaces.pool import placement

    settings.WORKSPACES_TENANT_NODE_SHARE = 0.5
    main = Node.objects.create(name="fs-main", engine_url="unix:///nonexistent", cpus=64, memory_mb=65536,
                               max_containers=4)
    spare = Node.objects.create(name="fs-spare", engine_url="unix:///nonexistent", cpus=64, memory_mb=65536,
                                max_containers=4)
    heavy = MembershipFactory(tenant=tenant_e)
    now = timezone.now()
    for i in range(2):
        container = Container.objects.create(node=main, template=tiny_template, state=Container.State.CLAIMED)
        workspace = Workspace.objects.create(tenant=tenant_e, owner=heavy.user, name=f"w{i}", template=tiny_template,
                                             host_key=f"fsw{i}{tenant_e.pk}", storage_path=f"/nonexistent/{i}")
        Session.objects.create(tenant=tenant_e, workspace=workspace, user=heavy.user, container=container,
                               started_at=now, last_activity_at=now)
    assert placement.placement_candidates(tiny_template, tenant=tenant_e) == [spare]
    other = TenantFactory(plan=tenant_e.plan)
    assert set(placement.placement_candidates(tiny_template, tenant=other)) == {main, spare}
    spare.enabled = False
    spare.save()
    with pytest.raises(placement.FairShareLimit):
        placement.placement_candidates(tiny_template, tenant=tenant_e)
