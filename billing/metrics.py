"""Billing's figures for /metrics (core/metrics.py): delivery attempts by provider and outcome, and, at scrape time,
the billing outbox's backlog and its dead letters."""
from django.db.models import Count, Min
from django.utils import timezone
from prometheus_client import Counter
from prometheus_client.core import GaugeMetricFamily

DELIVERIES = Counter("hearth_billing_deliveries_total", "Billing deliveries handled by the drain, by provider and "
                     "outcome (delivered; retry: failed or deferred, tried again later; dead: dead-lettered).",
                     ["provider", "outcome"])
# A new dead letter is hearth_billing_deliveries_total{outcome="dead"}; those still waiting for staff are the gauge
# hearth_billing_dead_letters (OutboxCollector).


def series_at_zero():
    """Every provider's outcomes exist from the start at 0: an alert's increase() then sees the first dead letter."""
    from billing.models import Provider

    for provider in Provider.values:
        for outcome in ("delivered", "retry", "dead"):
            DELIVERIES.labels(provider, outcome)


def deliveries_record(deliveries):
    """After a drained batch committed: count each delivery's outcome."""
    from billing.models import Delivery

    for delivery in deliveries:
        if delivery.state == Delivery.State.DELIVERED:
            outcome = "delivered"
        elif delivery.state == Delivery.State.DEAD:
            outcome = "dead"
        else:
            outcome = "retry"
        DELIVERIES.labels(delivery.provider, outcome).inc()


class OutboxCollector:
    """hearth_billing_outbox_backlog{provider}, hearth_billing_outbox_oldest_age_seconds{provider} (the oldest
    pending delivery) and hearth_billing_dead_letters{provider} (dead deliveries waiting for staff): one grouped
    query over the pending and dead rows (both have a partial index)."""

    def collect(self):
        from billing.models import Delivery, Provider

        rows = (Delivery.objects.filter(state__in=(Delivery.State.PENDING, Delivery.State.DEAD))
                .values("provider", "state").annotate(n=Count("id"), oldest=Min("created_at")).order_by())
        found = {(row["provider"], row["state"]): row for row in rows}
        now = timezone.now()
        backlog = GaugeMetricFamily("hearth_billing_outbox_backlog", "Billing deliveries pending (due or waiting "
                                    "for a retry), by provider.", labels=["provider"])
        oldest = GaugeMetricFamily("hearth_billing_outbox_oldest_age_seconds", "Age of the oldest pending billing "
                                   "delivery, by provider (0: none).", labels=["provider"])
        dead = GaugeMetricFamily("hearth_billing_dead_letters", "Dead billing deliveries (staff retry them in "
                                 "admin), by provider.", labels=["provider"])
        for provider in sorted(set(Provider.values) | {key[0] for key in found}):
            pending = found.get((provider, Delivery.State.PENDING))
            backlog.add_metric([provider], pending["n"] if pending else 0)
            oldest.add_metric([provider], (now - pending["oldest"]).total_seconds() if pending else 0.0)
            dead_row = found.get((provider, Delivery.State.DEAD))
            dead.add_metric([provider], dead_row["n"] if dead_row else 0)
        yield backlog
        yield oldest
        yield dead
