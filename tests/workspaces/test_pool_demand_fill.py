"""The warm pool that follows demand (issue 16): opens counted in Redis, the target decided per tick within the
template's minimum and maximum, containers started ahead of a rising demand and released after the hold-down when it
falls, the decision and the pool's figures on the admin page, a cold open's place in line.

Real PostgreSQL, Redis and Docker (the tiny image); the clock of the pool tick is passed in (`now=`) to step past
the hold-down without waiting for it.
"""
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import F
from django.utils import timezone

from tests.workspaces.fixtures_pool import *  # noqa: F403
from workspaces import pool, selectors, services
from workspaces.models import Container, Session, WorkspaceTemplate
from workspaces.pool import demand, opens, target

pytestmark = [pytest.mark.django_db, pytest.mark.docker]

State = Container.State


def _warm(template):
    return Container.objects.filter(template=template, state=State.WARM).count()


def _opens(template, times):
    for at in times:
        opens.open_record(template.pk, at=at)
    opens.opens_flush()


@pytest.fixture
def demand_template(tiny_template, settings):
    settings.WORKSPACES_POOL_LEAD_TIME_DEFAULT = 10.0  # no start measured yet: the lead time the rule sizes for
    tiny_template.warm_min, tiny_template.warm_max = 1, 6
    tiny_template.save()
    return tiny_template


def test_opens_counted_in_redis_come_back_in_their_windows(demand_template):
    now = timezone.now().timestamp()
    yesterday = now - demand.DAY + 120  # inside tomorrow's lookahead of the time of day
    _opens(demand_template, [now - 5, now - 15, now - 400, yesterday, yesterday])
    times, since = opens.opens_read(demand_template.pk, now=now, window_s=300, lookahead_s=900, days=7)
    assert len([t for t in times if t > now - 300]) == 2  # the recent window (10-second buckets)
    assert len([t for t in times if abs(t - yesterday) < 60]) == 2  # the same clock window a day ago (minutes)
    assert len(times) == 4  # 400 s ago is in neither window
    assert since is not None and since <= yesterday + 1


def test_a_rising_demand_raises_the_target_and_the_fill_starts_containers_ahead(node, demand_template):
    now = timezone.now()
    t = now.timestamp()
    # A ramp: 4 opens in the window's first half, 16 in its second (2.5 minutes each).
    _opens(demand_template, [t - 290 + i * 35 for i in range(4)] + [t - 140 + i * 8.5 for i in range(16)])
    started = pool.pool_fill(now=now)
    demand_template.refresh_from_db()
    times, since = opens.opens_read(demand_template.pk, now=t, window_s=300, lookahead_s=900, days=7)
    expected = demand.target_decide(bounds=demand.Bounds(1, 6), opens=times, now=t, lead_time_s=10.0,
                                    history_since=since)
    # A plain 20 opens in 300 s sized for 10 s is 0.67 → 3; the trend pushes it further, within the maximum.
    assert expected.target > demand.demand_quantile(20 / 300 * 10.0)
    assert demand_template.pool_target == expected.target <= 6
    assert started == expected.target and _warm(demand_template) == expected.target
    assert demand_template.pool_reason.startswith(f"{expected.target} (recent demand")


def test_a_flood_is_held_at_the_maximum(node, demand_template):
    t = timezone.now().timestamp()
    _opens(demand_template, [t - i * 0.5 for i in range(300)])
    pool.pool_fill()
    demand_template.refresh_from_db()
    assert demand_template.pool_target == 6 and "maximum" in demand_template.pool_reason
    assert _warm(demand_template) == 6


def test_falling_demand_releases_the_surplus_after_the_hold_down_never_below_the_minimum(node, demand_template,
                                                                                         settings, engine):
    settings.WORKSPACES_POOL_SHRINK_HOLD = 120
    demand_template.warm_min = 5
    demand_template.save()
    pool.pool_fill()
    assert _warm(demand_template) == 5
    demand_template.warm_min = 2  # staff lower the minimum; no opens: the target falls to it
    demand_template.save()
    t0 = timezone.now()

    pool.pool_fill(now=t0)
    demand_template.refresh_from_db()
    assert demand_template.pool_target == 2 and demand_template.pool_above_since == t0
    assert _warm(demand_template) == 5  # a dip is not acted on at once
    pool.pool_fill(now=t0 + timedelta(seconds=119))
    assert _warm(demand_template) == 5

    oldest = list(Container.objects.filter(template=demand_template, state=State.WARM).order_by("pk"))
    pool.pool_fill(now=t0 + timedelta(seconds=121))
    kept = list(Container.objects.filter(template=demand_template, state=State.WARM).order_by("pk"))
    assert kept == oldest[3:]  # the oldest three went, the minimum stayed
    assert all(c.state == State.REMOVED for c in Container.objects.filter(pk__in=[c.pk for c in oldest[:3]]))
    on_engine = {c.labels.get("hearth.container") for c in engine.list(instance=settings.HEARTH_INSTANCE)}
    assert on_engine >= {str(c.pk) for c in kept} and not on_engine & {str(c.pk) for c in oldest[:3]}
    pool.pool_fill(now=t0 + timedelta(seconds=200))
    demand_template.refresh_from_db()
    assert _warm(demand_template) == 2 and demand_template.pool_above_since is None


def test_demand_coming_back_within_the_hold_down_keeps_the_containers(node, demand_template, settings):
    settings.WORKSPACES_POOL_SHRINK_HOLD = 120
    demand_template.warm_min = 4
    demand_template.save()
    pool.pool_fill()
    # Starts measured at 10 s: the demand below then needs more than the 4 containers there are.
    Container.objects.filter(template=demand_template).update(created_at=F("ready_at") - timedelta(seconds=10))
    demand_template.warm_min = 1
    demand_template.save()
    t0 = timezone.now()
    pool.pool_fill(now=t0)
    demand_template.refresh_from_db()
    assert demand_template.pool_above_since == t0
    t = t0.timestamp()
    _opens(demand_template, [t + 30 - i * 5 for i in range(40)])  # busy again within the hold-down
    pool.pool_fill(now=t0 + timedelta(seconds=30))
    demand_template.refresh_from_db()
    assert demand_template.pool_above_since is None and demand_template.pool_target >= 4
    pool.pool_fill(now=t0 + timedelta(seconds=125))
    assert _warm(demand_template) >= 4


def test_the_lead_time_is_the_measured_cold_start_times_the_provisioning_rounds(node, demand_template, settings):
    now = timezone.now()
    for seconds in (0.4, 0.6, 5.0):
        Container.objects.create(node=node, template=demand_template, state=State.REMOVED,
                                 created_at=now, ready_at=now + timedelta(seconds=seconds))
    Container.objects.filter(template=demand_template).update(created_at=now)  # auto_now_add ignored the value
    assert target.cold_start_seconds(demand_template) == pytest.approx(0.6)
    settings.WORKSPACES_PROVISION_CONCURRENCY = 4
    assert target.lead_time_seconds(demand_template, missing=3, nodes=1) == pytest.approx(0.6)
    assert target.lead_time_seconds(demand_template, missing=9, nodes=1) == pytest.approx(1.8)  # 3 rounds of 4
    assert target.lead_time_seconds(demand_template, missing=9, nodes=3) == pytest.approx(0.6)


def test_the_bounds_are_checked_in_admin(admin_client, demand_template):
    url = f"/admin/workspaces/workspacetemplate/{demand_template.pk}/change/"
    form = admin_client.get(url).context["adminform"].form
    data = {name: form[name].value() for name in form.fields if form[name].value() is not None}
    data["environment"] = "{}"
    for minimum, maximum, error in ((5, 3, "at least the minimum"), (1, 300, "max containers")):
        page = admin_client.post(url, {**data, "warm_min": minimum, "warm_max": maximum})
        assert page.status_code == 200 and error in page.content.decode()
    page = admin_client.post(url, {**data, "warm_min": 2, "warm_max": 8})
    assert page.status_code == 302
    demand_template.refresh_from_db()
    assert (demand_template.warm_min, demand_template.warm_max) == (2, 8)


def test_the_pool_page_shows_the_target_why_hit_rate_p95_and_warm_cost(admin_client, node, demand_template, member,
                                                                        make_workspace):
    from billing.costs import cost_rates

    now = timezone.now()
    WorkspaceTemplate.objects.filter(pk=demand_template.pk).update(
        pool_target=3, pool_reason="3 (recent demand: 1.00 opens/min × lead 10.0 s; …)", pool_decided_at=now)
    workspace = make_workspace(member, name="seeded")
    # Opens: three in the last 24 h (two warm: 100, 300 ms; one cold: 2000 ms), two 3 days ago (warm 200 ms, cold
    # 900 ms), one 8 days ago (outside every window).
    for ago, cold, ms in ((timedelta(hours=1), False, 100), (timedelta(hours=2), False, 300),
                          (timedelta(hours=3), True, 2000), (timedelta(days=3), False, 200),
                          (timedelta(days=3, hours=1), True, 900), (timedelta(days=8), False, 50)):
        Session.objects.create(tenant=member.tenant, workspace=workspace, user=member.user, cold_start=cold,
                               started_at=now - ago, last_activity_at=now - ago, ended_at=now - ago, open_ms=ms)
    # WARM time: 2 h then claimed; 1 h and still WARM; started 8 days ago, released 6 days ago (1 day in the
    # window); a cold start (ready and claimed at once: none).
    rows = [(timedelta(hours=5), dict(claimed_at=now - timedelta(hours=3), state=State.REMOVED)),
            (timedelta(hours=1), dict(state=State.WARM)),
            (timedelta(days=8), dict(released_at=now - timedelta(days=6), state=State.REMOVED)),
            (timedelta(hours=4), dict(claimed_at=now - timedelta(hours=4), state=State.REMOVED))]
    for ago, fields in rows:
        c = Container.objects.create(node=node, template=demand_template, **fields)
        Container.objects.filter(pk=c.pk).update(ready_at=now - ago)
    figures = {r["template"].slug: r for r in selectors.pool_demand(now=now)}["tiny"]

    assert (figures["opens_24h"], figures["hit_rate_24h"]) == (3, pytest.approx(2 / 3))
    assert (figures["opens_7d"], figures["hit_rate_7d"]) == (5, pytest.approx(3 / 5))
    # percentile_cont: 95 % of the way along the sorted values, interpolated.
    assert figures["p95_open_ms_24h"] == pytest.approx(300 + 0.9 * (2000 - 300))
    assert figures["p95_open_ms_7d"] == pytest.approx(900 + 0.8 * (2000 - 900))
    assert figures["warm_hours_7d"] == pytest.approx(2 + 1 + 24, abs=1e-3)
    rates = cost_rates()
    seconds = Decimal(27 * 3600)
    by_hand = seconds * Decimal("0.10") * rates.vcpu_second + seconds * Decimal(64) / 1024 * rates.memory_gb_second
    assert figures["warm_cost_7d"] == pytest.approx(by_hand)
    assert figures["target"] == 3

    page = admin_client.get("/admin/workspaces/workspacetemplate/pool/").content.decode()
    assert "3 (recent demand: 1.00 opens/min × lead 10.0 s" in page
    assert "67 % of 3" in page and "60 % of 5" in page
    assert f"{by_hand:.2f} USD" in page and "27.00" in page
    assert 'id="pool-whatif"' in page  # where the simulator's what-if form goes


def test_a_cold_open_answered_at_once_says_its_place_and_expected_wait(node, demand_template, member,
                                                                       make_workspace, make_api_client, settings,
                                                                       monkeypatch, client):
    from tests.factories import MembershipFactory
    from workspaces import tasks

    monkeypatch.setattr(tasks.session_start, "delay", lambda session_id: None)  # no worker: they stay in line
    settings.WORKSPACES_PROVISION_CONCURRENCY = 2
    demand_template.warm_min = demand_template.warm_max = 0
    demand_template.save()
    answers, memberships = [], []
    for i in range(3):
        membership = member if i == 0 else MembershipFactory(tenant=member.tenant, role="member")
        memberships.append(membership)
        workspace = make_workspace(membership, name=f"line{i}")
        answers.append(make_api_client(membership).post(f"/api/v1/workspaces/{workspace.pk}/open"))
    assert [a.status_code for a in answers] == [202, 202, 202]
    # Two slots: the first two start in the first round of cold starts (10 s each here), the third in the second.
    assert [(a.json()["position"], a.json()["expected_wait_s"]) for a in answers] == [(1, 10.0), (2, 10.0),
                                                                                      (3, 20.0)]
    client.force_login(memberships[2].user)  # the portal's list, which reloads itself while it starts
    assert "number 3 in line, about 20 s" in client.get("/workspaces/").content.decode()
    session = Session.objects.get(pk=answers[0].json()["session"])
    services.session_start(session_id=str(session.pk))
    session.refresh_from_db()
    assert session.state == "live" and session.open_ms is not None and session.open_ms > 0


def test_a_warm_open_records_its_wait_and_counts_as_demand(node, demand_template, member, workspace):
    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    assert opened.session.cold_start is False
    assert Session.objects.get(pk=opened.session.pk).open_ms is not None
    opens.opens_flush()
    t = timezone.now().timestamp()
    times, _ = opens.opens_read(demand_template.pk, now=t + 1, window_s=300, lookahead_s=900, days=0)
    assert len(times) == 1
