"""The Celery app's configuration: JSON only, time limits, and a beat schedule whose tasks exist."""
from django.conf import settings
from django.utils import timezone

from config.celery import app


def _discover():
    """Import every installed app's tasks module, as a worker does at start."""
    app.autodiscover_tasks(lambda: settings.INSTALLED_APPS, force=True)


def test_beat_schedule_tasks_are_registered():
    _discover()
    schedule = app.conf.beat_schedule
    assert schedule == settings.CELERY_BEAT_SCHEDULE and schedule
    missing = {name: entry["task"] for name, entry in schedule.items() if entry["task"] not in app.tasks}
    assert not missing, f"beat entries naming unregistered tasks: {missing}"
    for entry in schedule.values():
        # An interval (`schedule`) or a time of day (`crontab`, the nightly reconciliation): each comes round.
        assert entry["schedule"].remaining_estimate(timezone.now()).total_seconds() >= 0
        assert getattr(entry["schedule"], "run_every", None) is None or entry["schedule"].run_every.total_seconds() > 0


def test_serialisation_and_limits():
    assert app.conf.task_serializer == "json" and app.conf.accept_content == ["json"]
    assert 0 < app.conf.task_soft_time_limit < app.conf.task_time_limit
    assert app.conf.worker_prefetch_multiplier == 1


def test_outbox_drain_is_acks_late_because_it_is_safe_to_repeat():
    _discover()
    assert app.tasks["tenants.tasks.outbox_drain"].acks_late is True
