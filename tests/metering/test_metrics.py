"""Metering's figures on /metrics: usage per tenant and meter after the events commit (duplicates and uncommitted
events not counted), the bound on the tenant label, and the samplers' failures and last success."""
import pytest
from django.db import transaction
from django.utils import timezone

from metering import samplers
from metering.ingestion import usage_record
from tests.factories import MembershipFactory, TenantFactory
from tests.metrics_support import scrape


@pytest.fixture
def top_one(settings):
    """One tenant gets its own label; the set is read again on every record (no waiting in the test)."""
    settings.METRICS_USAGE_TOP_TENANTS = 1
    settings.METRICS_USAGE_TOP_REFRESH = 0


def _record(tenant, meter, quantity, event_id):
    with transaction.atomic():
        return usage_record(tenant=tenant, meter=meter, quantity=quantity, event_id=event_id,
                            timestamp=timezone.now())


def test_usage_is_counted_per_tenant_and_meter_with_the_rest_as_other(db, top_one, redis_url,
                                                                      django_capture_on_commit_callbacks):
    big, small = TenantFactory(), TenantFactory()
    before = scrape()
    with django_capture_on_commit_callbacks(execute=True):
        for n in range(3):
            _record(big, "workspace_seconds", 60, f"metrics:{big.pk}:{n}")
        _record(big, "workspace_seconds", 60, f"metrics:{big.pk}:0")  # a duplicate: not usage again
    with django_capture_on_commit_callbacks(execute=True):
        _record(small, "workspace_seconds", 7, f"metrics:{small.pk}:0")
        _record(small, "seats", 4, f"metrics:{small.pk}:seats")  # a sampled gauge: events, no quantity total
    after = scrape()

    def moved(name, **labels):
        return after.value(name, **labels) - before.value(name, **labels)

    assert moved("hearth_usage_total", tenant=big.slug, meter="workspace_seconds") == 180
    assert moved("hearth_usage_events_total", tenant=big.slug, meter="workspace_seconds") == 3
    assert moved("hearth_usage_total", tenant="other", meter="workspace_seconds") == 7
    assert moved("hearth_usage_events_total", tenant="other", meter="seats") == 1
    assert moved("hearth_usage_total", tenant="other", meter="seats") == 0
    assert not after.value("hearth_usage_total", tenant=small.slug, meter="workspace_seconds")
    # The bound: one tenant of its own (the top one), everyone else in "other".
    tenants = {dict(labels)["tenant"] for labels in after.series("hearth_usage_events_total")}
    assert small.slug not in tenants


def test_usage_of_a_rolled_back_transaction_is_not_counted(db, top_one, redis_url,
                                                           django_capture_on_commit_callbacks):
    tenant = TenantFactory()
    before = scrape().value("hearth_usage_events_total", tenant="other", meter="workspace_seconds")
    with django_capture_on_commit_callbacks(execute=True):
        with pytest.raises(RuntimeError), transaction.atomic():
            _record(tenant, "workspace_seconds", 60, f"metrics:{tenant.pk}:rolled-back")
            raise RuntimeError("the change that caused it failed")
    after = scrape()
    assert after.value("hearth_usage_events_total", tenant="other", meter="workspace_seconds") == before
    assert after.value("hearth_usage_events_total", tenant=tenant.slug, meter="workspace_seconds") == 0


def test_a_sampler_success_stamps_its_time_and_a_failure_is_counted(db, redis_url, monkeypatch,
                                                                    django_capture_on_commit_callbacks):
    tenant = MembershipFactory().tenant
    before = scrape()
    started = timezone.now().timestamp()
    with django_capture_on_commit_callbacks(execute=True):
        samplers.seats_sample(tenant=tenant)
    assert scrape().value("hearth_sampler_last_success_timestamp_seconds", sampler="seats") >= started

    # A disk that fails the walk cannot be made on demand here: the measurement raises as it would.
    def unreadable(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(samplers, "_directory_bytes", unreadable)
    with pytest.raises(OSError):
        samplers.storage_sample(tenant=tenant)
    assert scrape().value("hearth_sampler_failures_total", sampler="storage") == \
        before.value("hearth_sampler_failures_total", sampler="storage") + 1
