"""Percentiles for the benchmarks (each runs as a script, so this is imported as `stats`)."""


def pct(values, p, *, scale=1, digits=2):
    """The p-th percentile of `values` by linear interpolation, times `scale` (1000: seconds to ms); None if empty."""
    values = sorted(values)
    if not values:
        return None
    k = (len(values) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return round((values[lo] + (values[hi] - values[lo]) * (k - lo)) * scale, digits)
