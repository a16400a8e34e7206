"""The domain-event outbox's figures for /metrics (core/metrics.py), at scrape time: its backlog and the age of its
oldest undelivered event."""
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily


class OutboxCollector:
    """hearth_outbox_backlog and hearth_outbox_oldest_age_seconds: one query on the pending index."""

    def collect(self):
        from tenants.models import OutboxEvent

        row = OutboxEvent.objects.filter(dispatched_at__isnull=True).aggregate(n=Count("id"), oldest=Min("created_at"))
        backlog = GaugeMetricFamily("hearth_outbox_backlog", "Domain events not yet delivered to all their consumers.")
        backlog.add_metric([], row["n"])
        oldest = GaugeMetricFamily("hearth_outbox_oldest_age_seconds",
                                   "Age of the oldest undelivered domain event (0: none).")
        oldest.add_metric([], (timezone.now() - row["oldest"]).total_seconds() if row["oldest"] else 0.0)
        yield backlog
        yield oldest
