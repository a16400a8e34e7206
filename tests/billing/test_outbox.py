"""Delivering billing events: real HTTP to a Stripe-shaped provider, outages, back-off, dead letters, retry."""
import json
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.db import transaction
from django.urls import reverse

from billing import outbox
from billing.models import BillingEvent, Delivery
from billing.outbox import backoff, billing_event_record
from billing.services import deliveries_drain, usage_report
from tenants.models import AuditLog
from tests.billing import outbox_support
from tests.billing.outbox_support import HOUR, tenant_billed_by, utc, workspace_time
from tests.factories import UserFactory

provider = outbox_support.provider

NOW = utc(2026, 11, 20, 12)


def usage_events(tenant, count):
    """`count` overage events of one minute each, as successive reports would make them."""
    with transaction.atomic():
        return [
            billing_event_record(tenant=tenant, kind=BillingEvent.Kind.USAGE, period_start=utc(2026, 11, 1),
                                 quantity=60, amount_cents=1, identifier=f"usage:t{tenant.pk}:test:{n}")
            for n in range(count)
        ]


def test_a_reported_overage_reaches_stripe_as_a_meter_event_with_its_idempotency_key(db, provider):
    tenant = tenant_billed_by("stripe", customer="cus_42")
    with time_machine.travel(NOW, tick=False):
        workspace_time(tenant, 20 * HOUR + 90, at=NOW)
        usage_report()
        assert deliveries_drain() == 1
    event = BillingEvent.objects.get(tenant=tenant)
    delivery = event.deliveries.get()
    assert (delivery.state, delivery.attempts, delivery.reference) == ("delivered", 1, event.identifier)
    sent = provider.events[event.identifier]
    # 90 s in hours, to the millionth, under the meter billing_sync_plans creates.
    assert sent["payload[stripe_customer_id]"] == "cus_42" and sent["payload[value]"] == "0.025000"
    assert sent["event_name"] == settings.BILLING_METER_EVENT_NAME == "workspace_hours"
    assert provider.requests == [(f"hearth:stripe:{event.identifier}", event.identifier)]


def test_the_drain_is_enqueued_after_commit_never_before_and_once_for_many_events(
        db, django_capture_on_commit_callbacks, redis_url, settings):
    import redis

    broker = redis.Redis.from_url(redis_url)
    queue = f"{settings.CELERY_BROKER_TRANSPORT_OPTIONS['global_keyprefix']}celery"

    outbox._last_enqueue["at"] = float("-inf")
    before = broker.llen(queue)
    tenant = tenant_billed_by("stripe")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        usage_events(tenant, 3)
        assert broker.llen(queue) == before  # nothing is enqueued inside the transaction
    for callback in callbacks:
        callback()
    assert broker.llen(queue) == before + 1  # three events, one drain
    newest = broker.lindex(queue, 0)  # kombu pushes on the left
    assert json.loads(newest)["headers"]["task"] == "billing.tasks.deliveries_drain"
    broker.lrem(queue, 1, newest)  # no worker consumes the test's queue


@pytest.mark.parametrize("outage", ["refused", "503"])
def test_an_hour_of_provider_outage_delays_and_loses_nothing(db, provider, outage):
    tenant = tenant_billed_by("stripe")
    with time_machine.travel(NOW, tick=False) as clock:
        events = usage_events(tenant, 30)
        if outage == "refused":
            provider.stop()
        else:
            provider.status = 503
        for _ in range(60):  # a drain a minute for the hour of the outage
            assert deliveries_drain() == 0
            clock.shift(timedelta(minutes=1))
        pending = Delivery.objects.filter(event__tenant=tenant)
        assert set(pending.values_list("state", flat=True)) == {"pending"}
        # One wave (BILLING_DRAIN_CONCURRENCY calls) probes the provider each time; the rest wait with it instead of
        # each counting attempts, so an outage of an hour dead-letters nothing.
        probing = [attempts for attempts in pending.values_list("attempts", flat=True) if attempts]
        assert len(probing) <= 8 and 5 <= max(probing) < 12
        if outage == "refused":
            provider.start()
        else:
            provider.status = 200
        clock.shift(backoff(12))  # the longest wait any of them can have
        assert deliveries_drain() == 30
    assert set(Delivery.objects.filter(event__tenant=tenant).values_list("state", flat=True)) == {"delivered"}
    assert sorted(provider.created) == sorted(event.identifier for event in events)  # each exactly once


def test_a_repeated_delivery_is_answered_from_the_idempotency_key(db, provider):
    tenant = tenant_billed_by("stripe")
    [event] = usage_events(tenant, 1)
    deliveries_drain()
    Delivery.objects.filter(event=event).update(state="pending")  # as if the worker died before marking it
    deliveries_drain()
    assert [key for key, _ in provider.requests] == [f"hearth:stripe:{event.identifier}"] * 2
    assert len(provider.events) == 1
    assert Delivery.objects.get(event=event).state == "delivered"


def test_a_known_identifier_under_a_new_key_counts_as_delivered(db, provider):
    tenant = tenant_billed_by("stripe")
    [event] = usage_events(tenant, 1)
    provider.events[event.identifier] = {"recorded": "earlier"}  # e.g. an idempotency key that has expired
    deliveries_drain()
    assert Delivery.objects.get(event=event).state == "delivered"


def test_permanent_refusals_and_tenants_without_a_customer_are_dead_at_once(db, provider):
    tenant = tenant_billed_by("stripe", customer="")
    [event] = usage_events(tenant, 1)
    deliveries_drain()
    delivery = Delivery.objects.get(event=event)
    assert (delivery.state, delivery.attempts) == ("dead", 1)
    assert "no Stripe customer id" in delivery.last_error
    assert provider.requests == []


def test_dead_letter_after_max_attempts_with_exponential_backoff(db, provider, settings):
    settings.BILLING_DELIVERY_MAX_ATTEMPTS = 4
    provider.status = 503
    tenant = tenant_billed_by("stripe")
    waits = []
    with time_machine.travel(NOW, tick=False) as clock:
        [event] = usage_events(tenant, 1)
        for _ in range(4):
            clock.shift(timedelta(days=1))
            deliveries_drain()
            delivery = Delivery.objects.get(event=event)
            if delivery.state == "pending":
                waits.append(delivery.next_attempt_at - utc(2026, 11, 20, 12) - timedelta(days=len(waits) + 1))
    assert waits == [timedelta(seconds=10), timedelta(seconds=20), timedelta(seconds=40)]
    assert (delivery.state, delivery.attempts) == ("dead", 4)
    assert "503" in delivery.last_error
    assert backoff(30) == timedelta(hours=1)  # capped


def dead_delivery(provider, settings):
    settings.BILLING_DELIVERY_MAX_ATTEMPTS = 1
    provider.status = 503
    tenant = tenant_billed_by("stripe")
    [event] = usage_events(tenant, 1)
    deliveries_drain()
    provider.status = 200
    delivery = Delivery.objects.get(event=event)
    assert delivery.state == "dead"
    return delivery


def staff(*permissions):
    from django.contrib.auth.models import Permission

    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="billing", codename__in=["view_delivery", *permissions]))
    return user


def retry_in_admin(client, user, delivery):
    client.force_login(user)
    return client.post(reverse("admin:billing_delivery_changelist"),
                       {"action": "retry", "_selected_action": [delivery.pk]}, follow=True)


def test_staff_see_dead_letters_and_retry_them_from_admin(db, client, provider, settings):
    delivery = dead_delivery(provider, settings)
    user = staff("retry_delivery")
    client.force_login(user)
    listing = client.get(reverse("admin:billing_delivery_changelist") + "?state__exact=dead")
    assert delivery.event.identifier in listing.content.decode()
    response = retry_in_admin(client, user, delivery)
    assert "1 deliveries will be retried now" in response.content.decode()
    delivery.refresh_from_db()
    assert (delivery.state, delivery.attempts) == ("pending", 0)
    audit = AuditLog.objects.get(action="billing.delivery_retried")
    assert (audit.actor, audit.tenant, audit.data["state"]) == (user, delivery.event.tenant, "dead")
    deliveries_drain()
    delivery.refresh_from_db()
    assert delivery.state == "delivered" and provider.created == [delivery.event.identifier]


def test_staff_without_the_permission_cannot_retry(db, client, provider, settings):
    delivery = dead_delivery(provider, settings)
    response = retry_in_admin(client, staff(), delivery)
    assert response.status_code == 200  # the action is not offered: nothing happens
    delivery.refresh_from_db()
    assert delivery.state == "dead"
    assert not AuditLog.objects.filter(action="billing.delivery_retried").exists()


def test_a_tenant_billed_by_both_providers_gets_each_event_from_both_and_one_outage_holds_only_its_own(
        db, provider):
    tenant = tenant_billed_by("stripe", "invoice")
    with time_machine.travel(NOW, tick=False) as clock:
        workspace_time(tenant, 21 * HOUR, at=NOW)
        usage_report()
        provider.status = 503
        deliveries_drain()
        usage = BillingEvent.objects.get(tenant=tenant, kind="usage")
        states = dict(usage.deliveries.values_list("provider", "state"))
        assert states == {"stripe": "pending", "invoice": "delivered"}
        provider.status = 200
        clock.shift(timedelta(minutes=5))
        deliveries_drain()
    assert set(Delivery.objects.filter(event__tenant=tenant).values_list("state", flat=True)) == {"delivered"}
    assert provider.created == [usage.identifier]
    assert usage.invoice_line.invoice.total_cents == 1000 + 50  # the fee and one hour at 50 c/h


@pytest.mark.parametrize(("status", "state"), [(500, "pending"), (503, "pending"), (429, "pending"), (409, "pending"),
                                               (401, "dead"), (400, "dead"), (404, "dead")])
def test_stripe_answers_are_retried_or_dead_lettered_by_status(db, provider, status, state):
    provider.status = status
    tenant = tenant_billed_by("stripe")
    [event] = usage_events(tenant, 1)
    deliveries_drain()
    delivery = Delivery.objects.get(event=event)
    assert (delivery.state, delivery.attempts) == (state, 1)
    assert str(status) in delivery.last_error
