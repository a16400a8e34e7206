"""The demand the warm pool follows: opens per template, counted in Redis and read back by the pool tick.

An open adds its time to an in-process buffer (no I/O on the request); a background thread adds the buffer to Redis
every FLUSH_SECONDS in one pipelined round trip: INCR of a 10-second bucket (kept an hour: the recent window) and of
a one-minute bucket (kept 8 days: the time of day on the previous days). The pool tick reads the buckets it needs in
one MGET (the recent window's, and the same clock window on each previous day) and turns them back into open times
for the pure rule (workspaces.pool.demand). Best effort by design: opens buffered in a process that dies are not
counted (the estimate of a rate, not a meter), and a Redis outage leaves the pool at its last target.
"""
import logging
import math
import time
from collections import Counter

import redis
from django.conf import settings

from core.background import BackgroundQueue
from core.redis_client import redis_client
from workspaces.pool.demand import DAY

log = logging.getLogger(__name__)

RECENT_BUCKET_S = 10
HISTORY_BUCKET_S = 60
RECENT_TTL_S = 3600
HISTORY_TTL_S = int(8 * DAY)


class DemandUnavailable(Exception):
    """Redis did not answer: the pool keeps its last target."""


def _prefix():
    # The cache's prefix: it carries the instance (and in tests the run), so installs and test runs never meet.
    return f"{settings.CACHES['default']['KEY_PREFIX']}:pool-opens"


def _client():
    return redis_client(settings.CACHES["default"].get("LOCATION") or settings.REDIS_URL)


def _key(template_id, width, bucket):
    return f"{_prefix()}:{template_id}:{width}:{bucket}"


FLUSH_SECONDS = 0.5


def _opens_write_logged(opens):
    try:
        _opens_write(opens)
    except Exception as exc:  # a Redis outage: these opens are not counted; the pool keeps its target
        log.warning("could not count %s", exc)


# Open times waiting for the background thread (one per process, started by its first open), written every
# FLUSH_SECONDS at most.
_buffer = BackgroundQueue("hearth-open-counter", _opens_write_logged, delay=FLUSH_SECONDS)


def open_record(template_id, *, at=None):
    """Count one open of `template_id` (now, or at `at`, epoch seconds). Costs a list append on the request."""
    _buffer.put((template_id, time.time() if at is None else at))


def opens_flush():
    """Add the buffered opens to Redis now (the background thread does it every FLUSH_SECONDS; tests call it)."""
    opens = _buffer.take()
    return _opens_write(opens) if opens else 0


def _opens_write(opens):
    counts = Counter()
    firsts = {}
    for template_id, at in opens:
        counts[(template_id, RECENT_BUCKET_S, int(at // RECENT_BUCKET_S))] += 1
        counts[(template_id, HISTORY_BUCKET_S, int(at // HISTORY_BUCKET_S))] += 1
        firsts[template_id] = min(at, firsts.get(template_id, at))
    pipe = _client().pipeline(transaction=False)
    for (template_id, width, bucket), n in counts.items():
        key = _key(template_id, width, bucket)
        pipe.incrby(key, n)
        pipe.expire(key, RECENT_TTL_S if width == RECENT_BUCKET_S else HISTORY_TTL_S)
    for template_id, at in firsts.items():
        pipe.set(f"{_prefix()}:{template_id}:since", at, nx=True)  # how many days of history there are
    try:
        pipe.execute()
    except redis.RedisError as exc:
        raise DemandUnavailable(f"{len(opens)} open(s): {exc}") from exc
    return len(opens)


def opens_read(template_id, *, now, window_s, lookahead_s, days):
    """(sorted open times, first open ever counted or None) of `template_id`: the last `window_s` (10-second buckets)
    and [now - d days, now - d days + lookahead_s) for d in 1..days (one-minute buckets), in one round trip.

    A bucket's n opens come back spread evenly over it (the current bucket's up to `now`). Raises DemandUnavailable.
    """
    spans = [(RECENT_BUCKET_S, now - window_s, now)]
    spans += [(HISTORY_BUCKET_S, now - d * DAY, now - d * DAY + lookahead_s) for d in range(1, days + 1)]
    buckets = []
    for width, start, end in spans:
        buckets += [(width, b) for b in range(int(start // width), int(math.ceil(end / width)))]
    keys = [_key(template_id, width, b) for width, b in buckets] + [f"{_prefix()}:{template_id}:since"]
    try:
        values = _client().mget(keys)
    except redis.RedisError as exc:
        raise DemandUnavailable(str(exc)) from exc
    since = float(values[-1]) if values[-1] is not None else None
    times = []
    for (width, b), value in zip(buckets, values[:-1], strict=True):
        n = int(value or 0)
        if not n:
            continue
        start = b * width
        span = max(min(start + width, now) - start, 1e-3)
        times += [start + span * (i + 0.5) / n for i in range(n)]
    times.sort()
    return times, since


def opens_forget(template_id):
    """Drop every count of `template_id` (a benchmark's template reused between runs starts without demand)."""
    client = _client()
    keys = list(client.scan_iter(match=f"{_prefix()}:{template_id}:*", count=1000))
    if keys:
        client.delete(*keys)
    return len(keys)
