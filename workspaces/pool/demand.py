"""The warm pool's target as a function of demand (issue 16): one pure rule, no database and no clock.

`pool_fill` (with opens read from the database) and `manage.py simulate` (with simulated opens) both call
`target_decide`, so the simulator replays the policy the real pool runs.

The rule: a claimed container is replaced after `lead_time_s` (a cold start, and the wait for a provisioning
slot). The opens that arrive meanwhile must find a WARM container, so the pool keeps what that window's opens need
with high probability: for Poisson arrivals at rate λ, the mean is λ·L and the target is its upper quantile,
λ·L + z·√(λ·L), rounded up. λ is the larger of
  - the recent rate (opens in the last `window_s`, and in the last `short_window_s`, whichever is higher: a ramp
    over a minute is diluted ten-fold in a five-minute window), pushed forward along its trend (the second half of
    the window against the first) from the middle of the second half to one lead time from now, so the pool grows
    ahead of a rising ramp, and
  - the rate expected from the time of day (the same clock window on the previous days, looking `lookahead_s`
    ahead), so a daily peak is met before its first opens arrive;
and the result is held within the bounds staff set (the template's minimum and maximum). When demand falls, both
rates fall and the target follows within a window: the surplus WARM containers are released (`surplus`).
"""
import math
from bisect import bisect_left
from dataclasses import dataclass

DAY = 86400.0

# The Poisson upper quantile's z: 2.33 is the one-sided 99th percentile of a normal.
DEFAULT_Z = 2.33


@dataclass(frozen=True)
class Bounds:
    minimum: int
    maximum: int

    def clamp(self, value):
        return max(self.minimum, min(self.maximum, value))


@dataclass(frozen=True)
class TargetDecision:
    target: int
    rate_per_min: float       # the rate the target was sized for
    recent_per_min: float     # opens per minute in the recent window, projected one lead time ahead
    expected_per_min: float   # opens per minute the time of day predicts
    lead_time_s: float
    reason: str               # "recent demand", "time of day", "minimum", "maximum"

    def explain(self):
        return (f"{self.target} ({self.reason}: {self.rate_per_min:.2f} opens/min × lead {self.lead_time_s:.1f} s; "
                f"recent {self.recent_per_min:.2f}/min, time of day {self.expected_per_min:.2f}/min)")


def _count(sorted_times, start, end):
    return bisect_left(sorted_times, end) - bisect_left(sorted_times, start)


def recent_rate(opens, *, now, window_s, lead_time_s):
    """Opens per second over the last `window_s`, projected `lead_time_s` ahead along the window's trend.

    `opens` is sorted (seconds). The second half's rate is the rate at its middle, a quarter window ago: projected
    from there to `lead_time_s` from now. Never below the window's plain rate: a trend only raises the estimate, and
    a falling rate is followed by the window itself."""
    half = window_s / 2
    first = _count(opens, now - window_s, now - half)
    second = _count(opens, now - half, now + 1e-9)
    plain = (first + second) / window_s
    slope = (second - first) / half / half  # change of the rate per second
    return max(plain, second / half + slope * (half / 2 + lead_time_s), 0.0)


def expected_rate(history, *, now, lookahead_s, days):
    """Opens per second expected in [now, now + lookahead_s) from the same clock window on the previous `days` days
    (`history` sorted seconds, covering at least those days). 0 without history."""
    if days <= 0:
        return 0.0
    total = sum(_count(history, now - d * DAY, now - d * DAY + lookahead_s) for d in range(1, days + 1))
    return total / days / lookahead_s


def demand_quantile(mean, z=DEFAULT_Z):
    """The opens a window with Poisson mean `mean` sees, at the z upper quantile (0 when none are expected)."""
    if mean <= 0:
        return 0
    return math.ceil(mean + z * math.sqrt(mean))


def target_decide(*, bounds, opens, now, lead_time_s, window_s=300.0, lookahead_s=900.0, history_days=7, z=DEFAULT_Z,
                  history_since=None, short_window_s=60.0):
    """The warm target for one template's pool at `now`. `opens`: sorted open times (seconds), the recent window and
    up to `history_days` days before it (fewer days of history count as fewer days). `history_since`: when the
    history starts, for callers that pass only the windows the rule reads (the pool tick); else the first open.
    `short_window_s`: the second, short window of the recent rate (0: none)."""
    recent = recent_rate(opens, now=now, window_s=window_s, lead_time_s=lead_time_s)
    if short_window_s:
        recent = max(recent, recent_rate(opens, now=now, window_s=short_window_s, lead_time_s=lead_time_s))
    days = 0
    first = history_since if history_since is not None else (opens[0] if opens else None)
    if first is not None:
        days = max(0, min(history_days, int((now - first) // DAY)))
    expected = expected_rate(opens, now=now, lookahead_s=lookahead_s, days=days)
    rate = max(recent, expected)
    wanted = demand_quantile(rate * lead_time_s, z)
    target = bounds.clamp(wanted)
    if target > wanted:
        reason = "minimum"
    elif target < wanted:
        reason = "maximum"
    else:
        reason = "recent demand" if recent >= expected else "time of day"
    return TargetDecision(target=target, rate_per_min=rate * 60, recent_per_min=recent * 60,
                          expected_per_min=expected * 60, lead_time_s=lead_time_s, reason=reason)


def surplus(*, warm, target):
    """WARM containers to release: those above the target (never negative)."""
    return max(0, warm - target)
