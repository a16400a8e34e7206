"""Recording usage exactly once: single, bulk, sessions with a controlled clock, egress, corrections; roll-ups match
events."""
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import Sum

from metering import batches, meters, selectors, services
from metering.exceptions import QuotaExceeded
from metering.models import Meter, TenantMeteringSettings, UsageEvent, UsageNotice, UsageRollup
from metering.tokens import service_token_create
from tenants.exceptions import Forbidden, ServiceError
from tenants.models import AuditLog, OutboxEvent
from tests.factories import MembershipFactory, UserFactory
from tests.metering.conftest import tenant_on

pytestmark = pytest.mark.django_db

T0 = datetime(2026, 3, 10, 8, 0, tzinfo=UTC)


def rollup(tenant, meter, period, start):
    row = UsageRollup.objects.filter(tenant=tenant, meter__slug=meter, period=period, period_start=start).first()
    return row.quantity if row else 0


def assert_rollups_match_events(tenant):
    """Every roll-up of a counter equals the sum of its distinct events, recomputed from scratch."""
    for row in UsageRollup.objects.filter(tenant=tenant, aggregation="sum"):
        end = row.period_start + (timedelta(days=1) if row.period == "day" else timedelta(days=40))
        if row.period == "month":
            from metering.periods import month_bounds

            end = month_bounds(row.period_start)[1]
        events = UsageEvent.objects.filter(tenant=tenant, meter_id=row.meter_id, timestamp__gte=row.period_start,
                                           timestamp__lt=end)
        assert row.quantity == (events.aggregate(s=Sum("quantity"))["s"] or 0), row
        assert row.event_count == events.count(), row


def test_same_event_id_counts_once():
    tenant = tenant_on("pro")
    with transaction.atomic():
        assert services.usage_record(tenant=tenant, meter="egress_bytes", quantity=100, event_id="e-1",
                                     timestamp=T0) is True
    with transaction.atomic():
        assert services.usage_record(tenant=tenant, meter="egress_bytes", quantity=999, event_id="e-1",
                                     timestamp=T0) is False
    assert UsageEvent.objects.filter(event_id="e-1").count() == 1
    assert rollup(tenant, "egress_bytes", "day", datetime(2026, 3, 10, tzinfo=UTC)) == 100
    assert rollup(tenant, "egress_bytes", "month", datetime(2026, 3, 1, tzinfo=UTC)) == 100


def test_bulk_path_counts_duplicates_within_and_across_batches():
    tenant, other = tenant_on("pro"), tenant_on("team")
    events = [{"id": f"b-{i}", "tenant": tenant if i % 2 else other.slug, "meter": "ai_builder_tokens",
               "quantity": i, "timestamp": T0 + timedelta(minutes=i)} for i in range(500)]
    first = services.usage_record_many(events + events[:50])  # in-batch duplicates too (COPY path)
    assert (first.accepted, first.duplicates) == (500, 50)
    second = services.usage_record_many(events[:100] + [{**events[0], "id": "b-new"}])
    assert (second.accepted, second.duplicates) == (1, 100)
    total = sum(range(500)) + 0
    assert (UsageRollup.objects.filter(meter__slug="ai_builder_tokens", period="month")
            .aggregate(s=Sum("quantity"))["s"]) == total
    assert_rollups_match_events(tenant)
    assert_rollups_match_events(other)


def test_bulk_path_refuses_invalid_events_whole():
    tenant = tenant_on("pro")
    with pytest.raises(ServiceError) as info:
        services.usage_record_many([
            {"id": "ok", "tenant": tenant, "meter": "egress_bytes", "quantity": 1, "timestamp": T0},
            {"id": "bad", "tenant": tenant, "meter": "nope", "quantity": 1, "timestamp": T0},
        ])
    assert info.value.code == "unknown_meter"
    assert not UsageEvent.objects.exists()


def test_gauge_keeps_peak_and_latest():
    tenant = tenant_on("pro")
    for i, size in enumerate([500, 900, 300]):
        services.usage_record(tenant=tenant, meter="storage_bytes", quantity=size, timestamp=T0 + timedelta(hours=i))
    row = UsageRollup.objects.get(tenant=tenant, meter__slug="storage_bytes", period="day")
    assert (row.quantity, row.last_quantity) == (900, 300)
    # A late sample from earlier does not replace the latest one.
    services.usage_record(tenant=tenant, meter="storage_bytes", quantity=100, timestamp=T0 - timedelta(hours=1))
    row.refresh_from_db()
    assert (row.quantity, row.last_quantity) == (900, 300)
    assert selectors.storage_current(tenant=tenant) == 300


def test_simulated_day_of_sessions_sums_to_the_second():
    """Sessions with odd lengths, interim events every minute, one across midnight: exact to the second."""
    tenant = tenant_on("team")
    durations = [1, 59, 60, 61, 3599, 7261.7, 12.3]
    start = datetime(2026, 3, 10, 0, 0, 0, 250000, tzinfo=UTC)
    expected_by_day = {}
    with time_machine.travel(start, tick=False) as clock:
        for number, duration in enumerate(durations):
            session_start = clock_now = start + timedelta(hours=2 * number + 0.37)
            session_end = session_start + timedelta(seconds=duration)
            metered_until = session_start
            while metered_until < session_end:
                clock_now = min(metered_until + timedelta(seconds=60), session_end)
                clock.move_to(clock_now)
                with transaction.atomic():
                    services.workspace_seconds_record(tenant=tenant, session_id=number, user_id=1, workspace_id=2,
                                                      start=metered_until, end=clock_now)
                    # A retry of the same interval (a worker re-running its task) counts nothing.
                    assert services.workspace_seconds_record(tenant=tenant, session_id=number, user_id=1,
                                                             workspace_id=2, start=metered_until,
                                                             end=clock_now) == 0
                metered_until = clock_now
            whole = int(session_end.timestamp()) - int(session_start.timestamp())
            expected_by_day[session_start.date()] = expected_by_day.get(session_start.date(), 0) + whole
        # Across midnight: 23:59:30 → 00:01:10 is 30 s on the 10th and 70 s on the 11th.
        late = datetime(2026, 3, 10, 23, 59, 30, tzinfo=UTC)
        with transaction.atomic():
            assert services.workspace_seconds_record(tenant=tenant, session_id="x", user_id=1, workspace_id=2,
                                                     start=late, end=late + timedelta(seconds=100)) == 100
    day10 = datetime(2026, 3, 10, tzinfo=UTC)
    assert rollup(tenant, "workspace_seconds", "day", day10) == expected_by_day[day10.date()] + 30
    assert rollup(tenant, "workspace_seconds", "day", day10 + timedelta(days=1)) == 70
    assert rollup(tenant, "workspace_seconds", "month", datetime(2026, 3, 1, tzinfo=UTC)) == sum(
        expected_by_day.values()) + 100
    assert_rollups_match_events(tenant)


def test_session_across_month_end_is_split_between_months():
    tenant = tenant_on("team")
    start = datetime(2026, 3, 31, 23, 0, tzinfo=UTC)
    with transaction.atomic():
        services.workspace_seconds_record(tenant=tenant, session_id=7, user_id=1, workspace_id=1, start=start,
                                          end=start + timedelta(hours=2))
    assert rollup(tenant, "workspace_seconds", "month", datetime(2026, 3, 1, tzinfo=UTC)) == 3600
    assert rollup(tenant, "workspace_seconds", "month", datetime(2026, 4, 1, tzinfo=UTC)) == 3600


def use_seconds(tenant, seconds, *, at, session="s"):
    with transaction.atomic():
        return services.workspace_seconds_record(tenant=tenant, session_id=session, user_id=1, workspace_id=1,
                                                 start=at, end=at + timedelta(seconds=seconds))


def test_free_tenant_after_30_minutes_is_refused_until_the_next_day(free_tenant):
    morning = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
    services.entitlement_check(tenant=free_tenant, now=morning)
    use_seconds(free_tenant, 30 * 60 - 1, at=morning)
    services.entitlement_check(tenant=free_tenant, now=morning + timedelta(minutes=31))  # one second left
    use_seconds(free_tenant, 1, at=morning + timedelta(minutes=31), session="s2")
    with pytest.raises(QuotaExceeded) as info:
        services.entitlement_check(tenant=free_tenant, now=morning + timedelta(minutes=32))
    error = info.value
    assert isinstance(error, Forbidden) and error.status_code == 403 and error.code == "quota_exceeded"
    assert error.extra["meter"] == "workspace_seconds"
    assert error.extra["resets_at"] == "2026-03-11T00:00:00+00:00"
    assert error.extra["upgrade_url"]
    assert "30 minutes" in error.message and "resets" in error.message and "upgrade" in error.message
    with pytest.raises(QuotaExceeded):
        services.entitlement_check(tenant=free_tenant, now=datetime(2026, 3, 10, 23, 59, 59, tzinfo=UTC))
    services.entitlement_check(tenant=free_tenant, now=datetime(2026, 3, 11, 0, 0, tzinfo=UTC))


def test_daily_allowance_resets_at_the_tenants_day_boundary(free_tenant):
    TenantMeteringSettings.objects.create(tenant=free_tenant, timezone="America/New_York")  # UTC-4 in March 10
    from metering.periods import zone_forget

    zone_forget(free_tenant.pk)
    evening = datetime(2026, 3, 11, 2, 0, tzinfo=UTC)  # 22:00 on the 10th in New York
    use_seconds(free_tenant, 30 * 60, at=evening)
    with pytest.raises(QuotaExceeded) as info:
        services.entitlement_check(tenant=free_tenant, now=evening + timedelta(minutes=31))
    assert info.value.extra["resets_at"] == "2026-03-11T04:00:00+00:00"  # midnight in New York
    services.entitlement_check(tenant=free_tenant, now=datetime(2026, 3, 11, 4, 0, tzinfo=UTC))
    assert rollup(free_tenant, "workspace_seconds", "day", datetime(2026, 3, 10, 4, 0, tzinfo=UTC)) == 1800


def test_workspace_seconds_remaining_hits_zero_exactly_at_the_limit(free_tenant):
    noon = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
    assert selectors.workspace_seconds_remaining(tenant=free_tenant, now=noon) == 1800
    use_seconds(free_tenant, 1799, at=noon)
    assert selectors.workspace_seconds_remaining(tenant=free_tenant, now=noon) == 1
    use_seconds(free_tenant, 1, at=noon + timedelta(seconds=1799))
    assert selectors.workspace_seconds_remaining(tenant=free_tenant, now=noon) == 0
    use_seconds(free_tenant, 5, at=noon + timedelta(seconds=1800))  # a late interim event cannot go below 0
    assert selectors.workspace_seconds_remaining(tenant=free_tenant, now=noon) == 0
    assert selectors.workspace_seconds_remaining(tenant=free_tenant, now=noon + timedelta(days=1)) == 1800


def test_remaining_is_none_with_overage_and_monthly_limit_without():
    pro, starter = tenant_on("pro"), tenant_on("starter")
    assert selectors.workspace_seconds_remaining(tenant=pro, now=T0) is None
    assert selectors.workspace_seconds_remaining(tenant=starter, now=T0) == 5 * 3600
    use_seconds(starter, 5 * 3600, at=T0)
    assert selectors.workspace_seconds_remaining(tenant=starter, now=T0) == 0
    with pytest.raises(QuotaExceeded) as info:
        services.entitlement_check(tenant=starter, now=T0 + timedelta(hours=6))
    assert info.value.extra["resets_at"] == "2026-04-01T00:00:00+00:00"
    use_seconds(pro, 30 * 3600, at=T0)  # pro allows paid overage: opening is still allowed
    services.entitlement_check(tenant=pro, now=T0 + timedelta(hours=31))


def test_storage_over_quota_blocks_new_opens(free_tenant):
    services.usage_record(tenant=free_tenant, meter="storage_bytes", quantity=100 * 1024 * 1024 + 1, timestamp=T0)
    with pytest.raises(QuotaExceeded) as info:
        services.entitlement_check(tenant=free_tenant, now=T0 + timedelta(minutes=1))
    assert info.value.extra["meter"] == "storage_bytes"
    services.usage_record(tenant=free_tenant, meter="storage_bytes", quantity=1024, timestamp=T0 + timedelta(hours=1))
    services.entitlement_check(tenant=free_tenant, now=T0 + timedelta(hours=1, minutes=1))


@pytest.mark.parametrize("status", ["suspended", "offboarded"])
def test_inactive_tenant_cannot_open(free_tenant, status):
    free_tenant.status = status
    with pytest.raises(Forbidden) as info:
        services.entitlement_check(tenant=free_tenant, now=T0)
    error = info.value
    assert (error.status_code, error.code) == (403, f"tenant_{status}")
    assert error.message == f"The tenant is {status}: no workspace can be opened."


def test_threshold_events_are_emitted_once_per_period():
    starter = tenant_on("starter")  # 5 h a month, no overage
    use_seconds(starter, 3 * 3600, at=T0)
    assert OutboxEvent.objects.filter(type__startswith="usage.").count() == 0
    use_seconds(starter, 3600, at=T0 + timedelta(hours=3), session="b")  # 4 h: 80 %
    use_seconds(starter, 60, at=T0 + timedelta(hours=4), session="c")
    assert list(OutboxEvent.objects.filter(type__startswith="usage.").values_list("type", flat=True)) == [
        "usage.threshold_80"]
    use_seconds(starter, 3600, at=T0 + timedelta(hours=5), session="d")  # over 5 h
    with transaction.atomic():
        services.usage_thresholds_check(tenant=starter, now=T0 + timedelta(hours=7))
    types = sorted(OutboxEvent.objects.filter(type__startswith="usage.").values_list("type", flat=True))
    assert types == ["usage.threshold_100", "usage.threshold_80"]
    event = OutboxEvent.objects.get(type="usage.threshold_100")
    assert event.payload["meter"] == "workspace_seconds" and event.payload["period"] == "month"
    # Next month starts afresh.
    use_seconds(starter, 4 * 3600 + 60, at=datetime(2026, 4, 2, tzinfo=UTC), session="e")
    assert OutboxEvent.objects.filter(type="usage.threshold_80").count() == 2


def test_overage_started_for_plans_with_paid_overage():
    pro = tenant_on("pro")  # 20 h a month with paid overage
    use_seconds(pro, 20 * 3600 + 1, at=T0)
    types = sorted(OutboxEvent.objects.filter(type__startswith="usage.").values_list("type", flat=True))
    assert types == ["usage.overage_started", "usage.threshold_100", "usage.threshold_80"]
    assert UsageNotice.objects.filter(tenant=pro).count() == 3
    assert selectors.usage_banner(pro, now=T0 + timedelta(days=1))["level"] == "danger"


def test_banner_warns_at_80_percent(free_tenant):
    assert selectors.usage_banner(free_tenant, now=T0) is None
    use_seconds(free_tenant, 25 * 60, at=T0)
    banner = selectors.usage_banner(free_tenant, now=T0 + timedelta(minutes=30))
    assert banner["level"] == "warning" and "83%" in banner["message"]


def test_correction_records_credit_with_audit_row():
    tenant = tenant_on("pro")
    staff = UserFactory(is_staff=True)
    use_seconds(tenant, 600, at=T0)
    with time_machine.travel(T0 + timedelta(hours=1), tick=False):
        event = services.usage_correction_record(tenant=tenant, meter="workspace_seconds", quantity=-120,
                                                 reason="Gateway outage credit", actor=staff)
    assert event.source == "correction" and event.actor == staff and event.reason == "Gateway outage credit"
    assert rollup(tenant, "workspace_seconds", "month", datetime(2026, 3, 1, tzinfo=UTC)) == 480
    audit = AuditLog.objects.get(action="usage.corrected")
    assert audit.data["quantity"] == -120 and audit.data["kind"] == "credit" and audit.actor == staff
    with pytest.raises(Forbidden):
        services.usage_correction_record(tenant=tenant, meter="workspace_seconds", quantity=1, reason="x",
                                         actor=UserFactory())
    with pytest.raises(ServiceError):
        services.usage_correction_record(tenant=tenant, meter="workspace_seconds", quantity=1, reason=" ",
                                         actor=staff)
    with pytest.raises(ServiceError):
        services.usage_correction_record(tenant=tenant, meter="storage_bytes", quantity=1, reason="x", actor=staff)


def test_storage_and_seat_samplers(settings, free_tenant):
    from tenants.services import tenant_storage_path

    root = tenant_storage_path(free_tenant.slug)
    (root / "users" / "1").mkdir(parents=True)
    (root / "users" / "1" / "a.txt").write_bytes(b"x" * 1000)
    (root / "b.bin").write_bytes(b"y" * 24)
    with transaction.atomic():
        assert services.storage_sample(tenant=free_tenant, now=T0) == 1024
        assert services.storage_sample(tenant=free_tenant, now=T0 + timedelta(minutes=5)) == 1024  # same hour
    assert UsageEvent.objects.filter(meter__slug="storage_bytes").count() == 1
    MembershipFactory(tenant=free_tenant)
    with transaction.atomic():
        assert services.seats_sample(tenant=free_tenant, now=T0) == 2
    assert selectors.usage_current(tenant=free_tenant, now=T0)["meters"]["seats"]["used"] == 2


def test_usage_current_reads_rollups_only(django_assert_max_num_queries):
    tenant = tenant_on("team")
    use_seconds(tenant, 7200, at=T0)
    services.usage_record(tenant=tenant, meter="egress_bytes", quantity=5000, timestamp=T0)
    with django_assert_max_num_queries(3) as captured:
        usage = selectors.usage_current(tenant=tenant, now=T0 + timedelta(hours=3))
    assert not any("metering_usageevent" in q["sql"] for q in captured.captured_queries)
    assert usage["period"] == {"start": datetime(2026, 3, 1, tzinfo=UTC), "end": datetime(2026, 4, 1, tzinfo=UTC)}
    ws = usage["meters"]["workspace_seconds"]
    assert ws == {"used": 7200, "included": 100 * 3600, "remaining": 100 * 3600 - 7200, "unit": "seconds",
                  "overage": 0}
    assert usage["meters"]["egress_bytes"]["used"] == 5000
    assert usage["day"]["meters"]["workspace_seconds"]["used"] == 7200


def test_meter_declare_and_inactive_meter_refuses_events():
    tenant = tenant_on("pro")
    meter = services.meter_declare(slug="web_builds", name="Web builds", unit="builds")
    assert services.usage_record(tenant=tenant, meter="web_builds", quantity=1, timestamp=T0)
    Meter.objects.filter(pk=meter.pk).update(active=False)
    meters.meter_cache.reload()
    with pytest.raises(ServiceError):
        services.usage_record(tenant=tenant, meter="web_builds", quantity=1, timestamp=T0)


@pytest.mark.django_db(transaction=True)
def test_concurrent_batches_with_overlapping_ids_count_each_once():
    """Two connections send overlapping batches in opposite orders at once: no deadlock, each id counted once."""
    import threading

    tenant = tenant_on("pro")
    events = [{"id": f"c-{i}", "tenant": tenant.slug, "meter": "egress_bytes", "quantity": 1, "timestamp": T0}
              for i in range(2000)]
    errors = []

    def send(batch):
        try:
            services.usage_record_many(batch)
        except Exception as exc:  # reported below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=send, args=(events if n % 2 else events[::-1],)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert UsageEvent.objects.count() == 2000
    assert rollup(tenant, "egress_bytes", "month", datetime(2026, 3, 1, tzinfo=UTC)) == 2000


def test_periodic_tasks_sample_and_notify(settings):
    # Mid-day, mid-month, so that "26 minutes ago" is today whenever the suite runs (it failed once at 00:01).
    with time_machine.travel(datetime(2026, 3, 10, 12, 0, tzinfo=UTC), tick=True):
        periodic_tasks_sample_and_notify()


def periodic_tasks_sample_and_notify():
    from config.celery import app
    from metering import tasks
    from tenants.services import tenant_storage_path

    tenant = tenant_on("free")
    MembershipFactory(tenant=tenant, role="owner")
    tenant_storage_path(tenant.slug).mkdir(parents=True)
    (tenant_storage_path(tenant.slug) / "f").write_bytes(b"z" * 4096)
    app.conf.task_always_eager = True
    try:
        tasks.storage_sample_all()
    finally:
        app.conf.task_always_eager = False
    tasks.seats_sample_all()
    usage = selectors.usage_current(tenant=tenant)
    assert usage["meters"]["storage_bytes"]["used"] == 4096 and usage["meters"]["seats"]["used"] == 1
    use_seconds(tenant, 1500, at=timezone_now() - timedelta(minutes=26))
    OutboxEvent.objects.all().delete()
    UsageNotice.objects.all().delete()
    assert tasks.usage_thresholds_scan() == 3  # 25 of 30 minutes: 80 %; 1 of 1 seat: 80 % and 100 %
    assert set(UsageNotice.objects.values_list("meter__slug", "period", "kind")) == {
        ("workspace_seconds", "day", "usage.threshold_80"), ("seats", "month", "usage.threshold_80"),
        ("seats", "month", "usage.threshold_100")}
    assert tasks.usage_thresholds_scan() == 0  # once


def timezone_now():
    from django.utils import timezone

    return timezone.now()


def test_a_running_session_is_ended_and_metered_exactly_at_the_limit(free_tenant):
    """What workspaces does each minute: remaining minus the unrecorded part; at 0 it records up to the limit."""
    start = datetime(2026, 3, 10, 10, 0, 0, 500000, tzinfo=UTC)
    use_seconds(free_tenant, 700, at=start - timedelta(hours=2), session="earlier")  # 1,100 s left today
    metered_until, now, ended_at = start, start, None
    while ended_at is None:
        now += timedelta(seconds=60)
        remaining = selectors.workspace_seconds_remaining(tenant=free_tenant, now=now)
        unrecorded = int(now.timestamp()) - int(metered_until.timestamp())
        end = now if unrecorded < remaining else datetime.fromtimestamp(
            int(metered_until.timestamp()) + remaining, UTC)
        with transaction.atomic():
            services.workspace_seconds_record(tenant=free_tenant, session_id="running", user_id=1, workspace_id=1,
                                              start=metered_until, end=end)
        metered_until = end
        if unrecorded >= remaining:
            ended_at = end
    assert int(ended_at.timestamp()) - int(start.timestamp()) == 1100
    assert rollup(free_tenant, "workspace_seconds", "day", datetime(2026, 3, 10, tzinfo=UTC)) == 1800
    assert selectors.workspace_seconds_remaining(tenant=free_tenant, now=ended_at) == 0
    with pytest.raises(QuotaExceeded):
        services.entitlement_check(tenant=free_tenant, now=ended_at)


def _live_session(tenant, user, started_at):
    from workspaces import services as workspace_services
    from workspaces.models import Container, Node, Session, WorkspaceTemplate

    template = WorkspaceTemplate.objects.filter(enabled=True).first()
    node = Node.objects.create(name=f"egress-{tenant.slug}", engine_url="unix:///nonexistent.sock", enabled=False)
    workspace = workspace_services.workspace_create(tenant=tenant, owner=user, name="w", template=template)
    container = Container.objects.create(node=node, template=template, state=Container.State.CLAIMED)
    return Session.objects.create(tenant=tenant, workspace=workspace, user=user, container=container,
                                  started_at=started_at, last_activity_at=started_at, metered_until=started_at)


def test_gateway_egress_bytes_are_metered_by_the_reclaim_tick(settings, tmp_path):
    """`egress_bytes` is fed from the gateway's egress log, read by the reclaim tick. The log is written here as
    HAProxy writes it (the gateway's own tests run HAProxy); no gateway runs, so activity has no counters."""
    from workspaces import services as workspace_services
    from workspaces.gateway import egress_log

    settings.GATEWAY_RUN_DIR = str(tmp_path)
    tenant = tenant_on("pro")
    member = MembershipFactory(tenant=tenant, role="owner")
    now = timezone_now()
    session = _live_session(tenant, member.user, now - timedelta(minutes=2))
    fd = egress_log.log_open(tmp_path)
    os.write(fd, f"hearth-egress {session.pk} 4000000\nhearth-egress {session.pk} 1000000\n".encode())
    os.close(fd)
    workspace_services.sessions_reclaim(now=now)
    workspace_services.sessions_reclaim(now=now)  # read again: nothing new
    egress = UsageRollup.objects.filter(tenant=tenant, period="month", meter__slug="egress_bytes").first()
    assert egress is not None and egress.quantity == 5_000_000


def test_unusual_usage_is_today_above_three_times_the_weekly_mean():
    steady, spiky = tenant_on("team"), tenant_on("team")
    today = datetime(2026, 3, 10, 15, 0, tzinfo=UTC)
    for days_ago in range(1, 8):
        for tenant in (steady, spiky):
            services.usage_record(tenant=tenant, meter="egress_bytes", quantity=100,
                                  timestamp=today - timedelta(days=days_ago))
    services.usage_record(tenant=steady, meter="egress_bytes", quantity=250, timestamp=today)
    services.usage_record(tenant=spiky, meter="egress_bytes", quantity=400, timestamp=today)
    flagged = selectors.unusual_usage(now=today)
    assert [(row["tenant"], row["meter"], row["today"]) for row in flagged] == [(spiky.slug, "egress_bytes", 400)]
    assert flagged[0]["average"] == 100


def test_storage_is_billed_as_the_mean_of_daily_peaks_in_gb_months():
    tenant = tenant_on("team")
    gib = 1024**3
    for day in range(1, 16):  # 2 GiB peaks for the first half of March, samples of 1 GiB in between
        services.usage_record(tenant=tenant, meter="storage_bytes", quantity=gib,
                              timestamp=datetime(2026, 3, day, 1, tzinfo=UTC))
        services.usage_record(tenant=tenant, meter="storage_bytes", quantity=2 * gib,
                              timestamp=datetime(2026, 3, day, 2, tzinfo=UTC))
    gb_months = selectors.storage_gb_months(tenant=tenant, month_start=datetime(2026, 3, 1, tzinfo=UTC))
    assert gb_months == Decimal(2 * 15) / 31


def test_two_bulk_calls_in_one_caller_transaction_do_not_see_each_others_rows():
    tenant = tenant_on("pro")
    first = [{"id": f"n1-{i}", "tenant": tenant, "meter": "egress_bytes", "quantity": 1, "timestamp": T0}
             for i in range(100)]
    second = [{**event, "id": event["id"].replace("n1", "n2")} for event in first]
    with transaction.atomic():
        a = services.usage_record_many(first)
        b = services.usage_record_many(second)
    assert (a.accepted, a.duplicates, b.accepted, b.duplicates) == (100, 0, 100, 0)
    assert rollup(tenant, "egress_bytes", "month", datetime(2026, 3, 1, tzinfo=UTC)) == 200
    with pytest.raises(RuntimeError), transaction.atomic():  # a rolled-back caller leaves nothing behind
        services.usage_record_many([{**event, "id": event["id"] + "-x"} for event in first])
        raise RuntimeError
    assert UsageEvent.objects.count() == 200
    assert services.usage_record_many([{**event, "id": event["id"] + "-y"} for event in first]).accepted == 100


def test_seats_follow_membership_changes_through_the_outbox_at_once():
    """A member joining mid-hour counts now (the hourly sample would miss them until the next hour)."""
    from tenants import services as tenant_services
    from tenants.events import outbox_drain

    owner = MembershipFactory(tenant=tenant_on("team"), role="owner")
    tenant = owner.tenant
    with transaction.atomic():
        services.seats_sample(tenant=tenant)  # this hour's sample: 1
    _, token = tenant_services.member_invite(tenant=tenant, email="new@example.test", actor=owner.user)
    tenant_services.invitation_accept(token=token, user=UserFactory(email="new@example.test"))
    assert selectors.usage_current(tenant=tenant)["meters"]["seats"]["used"] == 1  # not delivered yet
    outbox_drain()
    assert selectors.usage_current(tenant=tenant)["meters"]["seats"]["used"] == 2
    assert UsageEvent.objects.filter(tenant=tenant, meter__slug="seats").count() == 2
    outbox_drain()  # delivered once: no further sample
    assert UsageEvent.objects.filter(tenant=tenant, meter__slug="seats").count() == 2


def test_first_copy_of_an_id_in_a_batch_is_the_one_counted():
    tenant = tenant_on("pro")
    copies = [{"id": "same", "tenant": tenant, "meter": "egress_bytes", "quantity": q, "timestamp": T0} for q in (5, 7)]
    filler = [{"id": f"f-{i}", "tenant": tenant, "meter": "egress_bytes", "quantity": 1, "timestamp": T0}
              for i in range(100)]
    result = services.usage_record_many(filler[:50] + copies + filler[50:])
    assert (result.accepted, result.duplicates, result.quantity) == (101, 1, 105)
    assert UsageEvent.objects.get(event_id="same").quantity == 5
    again = services.usage_record_many(copies[::-1])  # both already stored now
    assert (again.accepted, again.duplicates) == (0, 2)
    assert rollup(tenant, "egress_bytes", "day", datetime(2026, 3, 10, tzinfo=UTC)) == 105
    assert_rollups_match_events(tenant)


def test_latest_gauge_sample_within_one_batch_is_the_latest_by_time_not_by_position():
    tenant = tenant_on("pro")
    samples = [(T0 + timedelta(hours=2), 300), (T0, 500), (T0 + timedelta(hours=3), 200),
               (T0 + timedelta(hours=1), 900)]
    services.usage_record_many([{"id": f"g-{i}", "tenant": tenant, "meter": "storage_bytes", "quantity": quantity,
                                 "timestamp": at} for i, (at, quantity) in enumerate(samples)])
    row = UsageRollup.objects.get(tenant=tenant, meter__slug="storage_bytes", period="day")
    assert (row.quantity, row.last_quantity, row.last_at, row.event_count) == (900, 200, T0 + timedelta(hours=3), 4)


def test_a_batch_of_corrections_keeps_each_ones_reason_and_actor():
    """A batch whose events differ in reason or actor takes the statement's per-row columns (the mixed path)."""
    tenant = tenant_on("pro")
    first, second = UserFactory(is_staff=True), UserFactory(is_staff=True)
    use_seconds(tenant, 600, at=T0)
    result = services.usage_record_many(
        [{"id": "corr-a", "tenant": tenant, "meter": "workspace_seconds", "quantity": -100, "timestamp": T0,
          "reason": "outage", "actor_id": first.pk},
         {"id": "corr-b", "tenant": tenant, "meter": "workspace_seconds", "quantity": 30, "timestamp": T0,
          "reason": "missed session", "actor_id": second.pk}],
        source=UsageEvent.Source.CORRECTION,
    )
    assert (result.accepted, result.quantity) == (2, -70)
    stored = {e.event_id: (e.source, e.reason, e.actor_id) for e in UsageEvent.objects.filter(source="correction")}
    assert stored == {"corr-a": ("correction", "outage", first.pk),
                      "corr-b": ("correction", "missed session", second.pk)}
    assert rollup(tenant, "workspace_seconds", "month", datetime(2026, 3, 1, tzinfo=UTC)) == 530
    assert_rollups_match_events(tenant)


def test_the_ingestion_statement_is_prepared_once_per_connection():
    """Also with quantities of every size: psycopg would send int2, int4 or int8 arrays, one statement each."""
    tenant = tenant_on("pro")
    for n, quantity in enumerate([1, 40_000, 2**40]):
        services.usage_record_many([{"id": f"p-{n}-{i}", "tenant": tenant, "meter": "egress_bytes",
                                     "quantity": quantity, "timestamp": T0} for i in range(10)])
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                       ["%INSERT INTO metering_usageevent%"])
        assert cursor.fetchone()[0] == 1
    assert rollup(tenant, "egress_bytes", "day", datetime(2026, 3, 10, tzinfo=UTC)) == 10 * (1 + 40_000 + 2**40)


def test_usage_events_carry_only_the_indexes_ingestion_needs():
    """Each index on the events table costs every ingested event an entry; reads use the roll-ups."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'metering_usageevent'")
        indexes = {name for (name,) in cursor.fetchall()}
        cursor.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = 'metering_usagerollup'::regclass "
                       "AND contype = 'f'")
        rollup_foreign_keys = cursor.fetchone()[0]
    assert indexes == {"metering_usageevent_pkey", "metering_usageevent_event_id_key"}
    assert rollup_foreign_keys == 0


@pytest.mark.parametrize("subject", [
    {"user": 1, "workspace": 2}, {"session": "s-1", "path": 'a "quoted" \\ back\nslash'}, {"name": "Zoë ☃"},
    {"flag": True, "n": None, "ratio": 0.5}, {"nested": {"a": [1, 2]}}, {1: "int key"}, {"big": 2**70},
    {"when": datetime(2026, 3, 10, tzinfo=UTC)}, {},
])
def test_subject_json_is_what_json_dumps_writes(subject):
    import json

    assert batches._subject_json(subject) == json.dumps(subject, separators=(",", ":"), default=str)


def test_a_batch_naming_an_unknown_meter_reloads_the_meter_list_once(django_assert_max_num_queries):
    tenant = tenant_on("pro")
    events = [{"id": f"u-{i}", "tenant": tenant.slug, "meter": "nope", "quantity": 1, "timestamp": T0}
              for i in range(50)]
    token, _ = service_token_create(name="unknown meter", meters=["nope"])
    with django_assert_max_num_queries(3):  # the tenants, the meters (once), nothing to insert
        result = services.usage_ingest(events, token=token, now=T0)
    assert [r["code"] for r in result.rejected] == ["unknown_meter"] * 50
