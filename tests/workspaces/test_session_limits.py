"""Capacity limits on sessions (issue 12): the plan's longest session, and a tenant's fair share of a node.

Real tiny containers on the shared engine, real PostgreSQL.
"""
from datetime import timedelta

import pytest
from django.utils import timezone

from metering.models import UsageEvent
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
