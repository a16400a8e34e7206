"""Celery's figures, and the only module that listens to Celery's signals: task failures (`task_failure`, how Celery
reports one), the time each task is sent (a header, for the queues' lag), the metrics files of worker processes
(start, process end), and the queues' length and lag read from Redis at scrape time.

Imported by config/celery.py before Django's settings are loaded: prometheus_client is imported only inside the
handlers, once PROMETHEUS_MULTIPROC_DIR is set (prometheus_client reads it once, at import).
"""
import json
import os
import time
from functools import cache

from celery import signals

SENT_AT_HEADER = "hearth_sent_at"  # epoch seconds, set by the sender
# kombu's Redis transport: a queue's priorities 3, 6 and 9 are lists of their own, `<queue>\x06\x16<priority>`.
_PRIORITY_SEPARATOR, _PRIORITIES = "\x06\x16", (0, 3, 6, 9)


@cache
def _failures():
    from prometheus_client import Counter

    return Counter("hearth_celery_task_failures_total", "Celery tasks that raised (after their retries), by task.",
                   ["task"])


def _task_failed(sender=None, **kwargs):
    _failures().labels(getattr(sender, "name", None) or "unknown").inc()


def _task_sent(headers=None, **kwargs):
    if headers is not None:
        headers.setdefault(SENT_AT_HEADER, time.time())


def _worker_started(**kwargs):
    from django.conf import settings

    settings.PROMETHEUS_MULTIPROC_DIR  # noqa: B018 -- loads the settings, which set the variable
    from core.metrics import multiprocess_dir_prepare

    multiprocess_dir_prepare()


def _worker_process_ended(pid=None, **kwargs):
    from core.metrics import process_dead

    process_dead(pid or os.getpid())


def connect():
    signals.task_failure.connect(_task_failed, weak=False, dispatch_uid="hearth-metrics-failure")
    signals.before_task_publish.connect(_task_sent, weak=False, dispatch_uid="hearth-metrics-sent")
    signals.worker_init.connect(_worker_started, weak=False, dispatch_uid="hearth-metrics-worker-init")
    signals.worker_process_shutdown.connect(_worker_process_ended, weak=False, dispatch_uid="hearth-metrics-exit")


# --- the queues, at scrape time -----------------------------------------------------------------------------------


def _queue_names(app):
    return sorted(app.amqp.queues.keys()) or [app.conf.task_default_queue]


def _sent_at(raw):
    try:
        return float(json.loads(raw)["headers"][SENT_AT_HEADER])
    except (ValueError, KeyError, TypeError):
        return None  # sent by something that does not set the header (an older release)


class QueueCollector:
    """hearth_celery_queue_length{queue} and hearth_celery_queue_lag_seconds{queue} (how long the oldest waiting task
    has waited): one Redis round trip for all queues (LLEN and the oldest message of each priority list)."""

    def collect(self):
        from django.conf import settings
        from prometheus_client.core import GaugeMetricFamily

        from config.celery import app
        from core.redis_client import redis_client

        prefix = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "")
        queues = _queue_names(app)
        with redis_client(settings.CELERY_BROKER_URL).pipeline(transaction=False) as pipe:
            for queue in queues:
                for priority in _PRIORITIES:
                    key = prefix + (f"{queue}{_PRIORITY_SEPARATOR}{priority}" if priority else queue)
                    pipe.llen(key)
                    pipe.lindex(key, -1)  # LPUSH in, BRPOP out: the oldest is at the right end
            replies = pipe.execute()
        length = GaugeMetricFamily("hearth_celery_queue_length", "Tasks waiting in the Celery queue.",
                                   labels=["queue"])
        lag = GaugeMetricFamily("hearth_celery_queue_lag_seconds",
                                "How long the oldest task waiting in the queue has waited (0: empty).",
                                labels=["queue"])
        now = time.time()
        for index, queue in enumerate(queues):
            pairs = replies[index * 8:(index + 1) * 8]
            waiting = sum(pairs[0::2])
            sent = [s for s in (_sent_at(raw) for raw in pairs[1::2] if raw is not None) if s is not None]
            length.add_metric([queue], waiting)
            lag.add_metric([queue], max(0.0, now - min(sent)) if sent else 0.0)
        yield length
        yield lag
