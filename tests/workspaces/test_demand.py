"""The warm target's pure rule (workspaces/pool/demand.py): what pool_fill and the simulator both run."""
from workspaces.pool.demand import DAY, Bounds, demand_quantile, expected_rate, recent_rate, surplus, target_decide

BOUNDS = Bounds(minimum=2, maximum=20)


def test_no_demand_keeps_the_minimum():
    decision = target_decide(bounds=BOUNDS, opens=[], now=10 * DAY, lead_time_s=2.0)
    assert (decision.target, decision.reason) == (2, "minimum")


def test_steady_demand_sizes_the_pool_for_the_lead_time():
    now = 1000.0
    opens = [now - 300 + i * 5 for i in range(60)]  # 12 a minute for five minutes
    decision = target_decide(bounds=BOUNDS, opens=opens, now=now, lead_time_s=10.0, window_s=300)
    # 0.2 opens/s × 10 s = 2 expected: 2 + 2.33·√2 → 6
    assert decision.target == demand_quantile(2.0) == 6
    assert decision.reason == "recent demand"
    assert abs(decision.rate_per_min - 12.0) < 0.5


def test_a_rising_ramp_is_met_ahead_of_its_plain_rate():
    now = 600.0
    # the rate rises linearly from 0: twice as many opens in the window's second half as in its first, and more
    opens = sorted(now - 300 + 300 * (i / 90) ** 0.5 for i in range(90))
    plain = len(opens) / 300
    assert recent_rate(opens, now=now, window_s=300, lead_time_s=30) > plain * 1.3


def test_the_time_of_day_raises_the_target_before_the_daily_peak():
    peak = 3 * DAY + 9 * 3600  # 09:00 on day 3
    history = sorted(peak - d * DAY + i * 10 for d in (1, 2) for i in range(90))  # 09:00-09:15, 6/min, two days
    now = peak - 60  # one minute before the peak, no opens yet today
    assert expected_rate(history, now=now, lookahead_s=900, days=2) > 0.09
    decision = target_decide(bounds=BOUNDS, opens=history, now=now, lead_time_s=20.0)
    assert decision.reason == "time of day"
    assert decision.target > BOUNDS.minimum


def test_the_maximum_bounds_a_flood():
    now = 100.0
    opens = [now - i * 0.1 for i in range(1000)][::-1]
    decision = target_decide(bounds=BOUNDS, opens=opens, now=now, lead_time_s=5.0)
    assert (decision.target, decision.reason) == (20, "maximum")


def test_falling_demand_releases_the_surplus():
    now = 5000.0
    busy = [now - 2000 + i for i in range(300)]  # busy half an hour ago, quiet since
    decision = target_decide(bounds=BOUNDS, opens=busy, now=now, lead_time_s=10.0)
    assert decision.target == 2
    assert surplus(warm=9, target=decision.target) == 7
    assert surplus(warm=1, target=decision.target) == 0


def test_history_since_sets_the_days_when_only_the_windows_are_passed():
    peak = 3 * DAY + 9 * 3600
    windows = sorted(peak - d * DAY + i * 10 for d in (1, 2) for i in range(90))  # only the 09:00 windows of 2 days
    now = peak - 60  # the 15-minute lookahead holds 84 of each day's 90 opens
    # The history started at day 0: three days, one of them (day 0) with no opens in its window.
    with_since = target_decide(bounds=BOUNDS, opens=windows, now=now, lead_time_s=20.0, history_since=0.0)
    assert abs(with_since.expected_per_min - (84 + 84) / 3 / 15) < 1e-6
    # Without it, the first open passed (day 1's window) makes it one day of history.
    without = target_decide(bounds=BOUNDS, opens=windows, now=now, lead_time_s=20.0)
    assert abs(without.expected_per_min - 84 / 15) < 1e-6


def test_a_ramp_over_a_minute_is_seen_by_the_short_window():
    # 50 opens in 60 s at a linearly rising rate (the k-th at 60·√(k/50)): 1.67 opens/s at the end.
    now = 1000.0
    opens = [now - 60 + 60 * ((k + 1) / 50) ** 0.5 for k in range(50)]
    long_only = target_decide(bounds=BOUNDS, opens=opens, now=now, lead_time_s=1.0, short_window_s=0)
    both = target_decide(bounds=BOUNDS, opens=opens, now=now, lead_time_s=1.0)
    assert long_only.recent_per_min < 35  # the five-minute window: 50 opens in its last half (20/min plain)
    assert 95 < both.recent_per_min < 110 and both.target > long_only.target  # the ramp ends at 100/min


def test_a_linear_ramp_is_projected_to_the_rate_one_lead_time_ahead():
    # The rate rises 1/36 opens/s each second from t=0 (50 opens in 60 s); at t=40 it is 1.11/s, at 42 s 1.17/s.
    now = 40.0
    opens = [60 * ((k + 1) / 50) ** 0.5 for k in range(50)]
    opens = [t for t in opens if t <= now]
    rate = recent_rate(opens, now=now, window_s=60, lead_time_s=2.0)
    assert 1.05 < rate < 1.25  # the second half's plain rate (0.69/s) lags it by 15 s
