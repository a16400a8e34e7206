"""The Celery app (its periodic loops are in settings' CELERY_BEAT_SCHEDULE) and its metrics signals."""
import os

from celery import Celery

from core import celery_metrics

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.base")

app = Celery("hearth")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
# Task failures, the send time behind the queues' lag, and the worker processes' metrics files (core/metrics.py).
celery_metrics.connect()
