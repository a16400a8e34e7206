"""The Celery app, the beat schedule of Hearth's periodic loops, and per-process telemetry for its workers."""
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("hearth")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


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
