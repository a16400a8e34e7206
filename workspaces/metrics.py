"""The workspaces' figures for /metrics (core/metrics.py): the claim's latency, cold starts, session ends by reason,
the reconciler's fixes and last pass, and, at scrape time, the pool by template and state and the nodes' health."""
import time

from django.db.models import Count
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

# A warm claim is one statement, about 1 ms here (docs/FACTS: 0.9 ms p50, 2.5 ms p99); the upper buckets catch a
# database under load.
CLAIM_SECONDS = Histogram(
    "hearth_claim_duration_seconds", "The open's claim of a WARM container (one statement), by template and outcome "
    "(warm: a container was taken; empty: none was free, a cold start follows).", ["template", "outcome"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0))
COLD_STARTS = Counter("hearth_cold_starts_total", "Opens that found no WARM container of their template (a cold "
                      "start: the user waits for a container).", ["template"])
RECLAIMS = Counter("hearth_reclaims_total", "Sessions ended, by reason (idle, quota, max_length, closed, lost, "
                   "failed, suspended, drained, deleted); counted when the end commits.", ["reason"])
RECONCILER_FIXES = Counter("hearth_reconciler_fixes_total", "What the reconciler found wrong and fixed, by kind.",
                           ["kind"])
EGRESS_GRANT_FAILURES = Counter("hearth_egress_grant_failures_total", "Internet grants after an open that failed "
                                "(iptables or the database); the reconciler's next pass grants them.")
RECONCILER_LAST_SUCCESS = Gauge("hearth_reconciler_last_success_timestamp_seconds",
                                "When the last full reconciler pass finished (Unix time).", multiprocess_mode="max")
# The reconciler's report keys that count fixes (its other key lists the engines it could not ask).
FIX_KINDS = ("orphans_removed", "lost", "failed", "released", "slots_removed", "sessions_ended", "egress_closed",
             "egress_granted")


def series_at_zero():
    """The label values known in advance exist from the start at 0: an alert's rate() then sees the first one."""
    from workspaces.models import Session

    for reason in Session.EndReason.values:
        RECLAIMS.labels(reason)
    for kind in FIX_KINDS:
        RECONCILER_FIXES.labels(kind)


def claim_observe(*, template, started, claimed):
    CLAIM_SECONDS.labels(template.slug, "warm" if claimed else "empty").observe(time.perf_counter() - started)


def reconcile_record(report, *, full):
    """Count a pass's fixes; a full pass (every node) also stamps the last success."""
    for kind in FIX_KINDS:
        count = report.get(kind) or 0
        if count:
            RECONCILER_FIXES.labels(kind).inc(count)
    if full:
        RECONCILER_LAST_SUCCESS.set(time.time())


class PoolCollector:
    """hearth_pool_containers{template,state}: every enabled template's containers by live state (zeros included, so
    "no WARM container" is a series at 0, not a missing one), and hearth_pool_warm_target{template}: the WARM
    containers it keeps per node now (the pool tick's last decision within the bounds; 0: disabled or paused).
    Two small queries."""

    def collect(self):
        from workspaces.models import Container, WorkspaceTemplate

        templates = {t.slug: (t.warm_target_now() if t.enabled and not t.pool_paused else 0) for t in
                     WorkspaceTemplate.objects.only("slug", "warm_min", "warm_max", "pool_target", "enabled",
                                                    "pool_paused")}
        counts = {(row["template__slug"], row["state"]): row["n"] for row in
                  Container.objects.filter(state__in=Container.ACTIVE_STATES)
                  .values("template__slug", "state").annotate(n=Count("id")).order_by()}
        containers = GaugeMetricFamily("hearth_pool_containers", "Containers by template and state (the database).",
                                       labels=["template", "state"])
        for slug in sorted(templates):
            for state in Container.ACTIVE_STATES:
                containers.add_metric([slug, state.value], counts.get((slug, state.value), 0))
        target = GaugeMetricFamily("hearth_pool_warm_target", "WARM containers the pool keeps per usable node, by "
                                   "template (0: template disabled or its pool paused).", labels=["template"])
        for slug, value in sorted(templates.items()):
            target.add_metric([slug], value)
        yield containers
        yield target


class NodeCollector:
    """hearth_node_healthy{node} (workspaces.pool.health's rule) and hearth_node_draining{node}, for enabled nodes:
    one query."""

    def collect(self):
        from workspaces.models import Node
        from workspaces.pool import health

        healthy = GaugeMetricFamily("hearth_node_healthy", "1 while the node's engine answers (the health rule of "
                                    "workspaces.pool.health), for enabled nodes.", labels=["node"])
        draining = GaugeMetricFamily("hearth_node_draining", "1 while the node is drained.", labels=["node"])
        for name, is_healthy, is_draining in (Node.objects.filter(enabled=True).annotate(ok=health.node_healthy())
                                              .values_list("name", "ok", "draining").order_by("name")):
            healthy.add_metric([name], int(bool(is_healthy)))
            draining.add_metric([name], int(is_draining))
        yield healthy
        yield draining
