"""Metering's figures for /metrics (core/metrics.py): usage per tenant and meter as counters with a bounded set of
tenant labels, and the samplers' (storage, seats) and the quota scan's failures and last success.

The bound: a tenant has its own `tenant` label only while it is among the METRICS_USAGE_TOP_TENANTS tenants with the
most usage events this month (read again every METRICS_USAGE_TOP_REFRESH seconds, one grouped query); every other
tenant's usage is counted under tenant="other". Meters are the platform's and those declared by templates or staff
through the API (one global catalogue, tens, not per tenant). So a process has at most (N + 1) × meters series of each
counter; a tenant leaving the top N keeps its (then flat) series until the processes restart.
"""
import functools
import threading
import time

from django.conf import settings
from django.db.models import Sum
from prometheus_client import Counter, Gauge

USAGE = Counter("hearth_usage_total", "Usage recorded, in each meter's unit (seconds, bytes, …), for meters that "
                "add up (aggregation sum), by tenant (top N by events this month, else \"other\") and meter.",
                ["tenant", "meter"])
USAGE_EVENTS = Counter("hearth_usage_events_total", "Usage events recorded (duplicates not counted), by tenant (top "
                       "N, else \"other\") and meter.", ["tenant", "meter"])
SAMPLER_FAILURES = Counter("hearth_sampler_failures_total", "Runs of a usage sampler or of the quota scan that "
                           "raised, by sampler (storage, seats, thresholds).", ["sampler"])
SAMPLER_LAST_SUCCESS = Gauge("hearth_sampler_last_success_timestamp_seconds", "When a sampler or the quota scan last "
                             "finished without error (Unix time), by sampler.", ["sampler"], multiprocess_mode="max")
OTHER = "other"
SAMPLERS = ("storage", "seats", "thresholds")
for _name in SAMPLERS:  # at 0 from the start: an alert's increase() sees the first failure
    SAMPLER_FAILURES.labels(_name)


class _Labels:
    """tenant id -> its label (top N) and meter id -> (slug, aggregation), read again now and then by each process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.tenants, self.meters, self.read_at = {}, {}, float("-inf")

    def refresh(self):
        from metering import periods
        from metering.models import Meter, UsageRollup

        month_start, _ = periods.month_bounds()
        top = (UsageRollup.objects.filter(period="month", period_start=month_start)
               .values("tenant_id", "tenant__slug").annotate(events=Sum("event_count"))
               .order_by("-events", "tenant_id")[:max(0, settings.METRICS_USAGE_TOP_TENANTS)])
        self.tenants = {row["tenant_id"]: row["tenant__slug"] for row in top}
        self.meters = {pk: (slug, aggregation) for pk, slug, aggregation in
                       Meter.objects.values_list("pk", "slug", "aggregation")}
        self.read_at = time.monotonic()

    def current(self, meter_ids):
        with self.lock:
            if (time.monotonic() - self.read_at > settings.METRICS_USAGE_TOP_REFRESH
                    or any(pk not in self.meters for pk in meter_ids)):
                self.refresh()
            return self.tenants, self.meters


_labels = _Labels()


def usage_record(totals):
    """After new events committed: `totals` is [(tenant id, meter id, quantity, events)] (the ingestion statement's
    sums of what it inserted)."""
    if not totals:
        return
    tenants, meters = _labels.current({meter_id for _, meter_id, _, _ in totals})
    # Added up per label first: a batch of many tenants becomes at most (N + 1) × meters increments (each is a
    # locked write to this process's file).
    by_label = {}
    for tenant_id, meter_id, quantity, events in totals:
        slug, aggregation = meters.get(meter_id, (str(meter_id), "sum"))
        key = (tenants.get(tenant_id, OTHER), slug)
        summed = by_label.setdefault(key, [0, 0])
        summed[0] += quantity if aggregation == "sum" else 0
        summed[1] += events
    for (tenant, slug), (quantity, events) in by_label.items():
        USAGE_EVENTS.labels(tenant, slug).inc(events)
        if quantity > 0:
            USAGE.labels(tenant, slug).inc(quantity)


def sampler(name):
    """A sampler's run: counted as a failure if it raises, stamped as the last success if it returns."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                result = fn(*args, **kwargs)
            except Exception:
                SAMPLER_FAILURES.labels(name).inc()
                raise
            SAMPLER_LAST_SUCCESS.labels(name).set(time.time())
            return result

        return run

    return decorate
