"""The Celery app (its periodic loops are in settings' CELERY_BEAT_SCHEDULE), its metrics signals and per-process
telemetry for its workers."""
import os

from celery import Celery, signals

from core import celery_metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("hearth")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task failures, the send time behind the queues' lag, and the worker processes' metrics files (core/metrics.py).
celery_metrics.connect()


@signals.worker_process_init.connect(weak=False)
def _telemetry_in_child(**kwargs):
    """Each prefork child sets up its own tracing after the fork (the exporter's thread does not survive one)."""
    from core.telemetry import telemetry_setup

    telemetry_setup(process="worker")


@signals.worker_init.connect(weak=False)
def _telemetry_in_worker(sender=None, **kwargs):
    """Solo and thread pools run tasks in the worker's own process: no child to wait for."""
    if "prefork" not in str(getattr(sender, "pool_cls", "prefork")):
        from core.telemetry import telemetry_setup

        telemetry_setup(process="worker")


@signals.task_prerun.connect(weak=False)
def _context_clear(**kwargs):
    """A task starts with no tenant of the previous task on this thread (core.context)."""
    from core.context import context_clear

    context_clear()
