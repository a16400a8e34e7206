"""Reconciliation: metered vs reported vs billed per tenant, meter and month; the gaps in admin, their re-send, the
command. Real PostgreSQL; the Stripe provider over real HTTP to the offline Stripe emulator."""
import json
from io import StringIO

import pytest
from django.contrib.auth.models import Permission
from django.core.management import CommandError, call_command
from django.urls import reverse
from django.utils import timezone

from billing.models import BillingEvent, Delivery, InvoiceLine, ReconciliationGap
from billing.providers.stripe import hours
from billing.reconciliation import period_parse, reconciliation_gap_resend, reconciliation_run
from billing.reporting import overage_amount_cents
from billing.services import deliveries_drain, usage_report_tenant
from metering import periods
from tenants.exceptions import ServiceError
from tenants.models import AuditLog
from tests.billing.outbox_support import HOUR, tenant_billed_by, workspace_time
from tests.billing.test_meter_hours import hourly_meter, summed_hours  # noqa: F401 (a fixture)
from tests.factories import UserFactory

ALLOWANCE = 20 * HOUR  # Pro's monthly hours


def month():
    return periods.month_bounds()[0]


def staff(*codenames):
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(
        content_type__app_label="billing", codename__in=["view_reconciliationgap", *codenames]))
    return UserFactory._meta.model.objects.get(pk=user.pk)


def resend_in_admin(client, user, gaps):
    client.force_login(user)
    return client.post(reverse("admin:billing_reconciliationgap_changelist"),
                       {"action": "resend", "_selected_action": [gap.pk for gap in gaps]}, follow=True)


def overage(tenant, seconds, n):
    """`seconds` more workspace time, reported: its usage events (one per call once past the allowance; the
    invoice provider's plan fee is left out)."""
    workspace_time(tenant, seconds, at=timezone.now(), event_id=f"recon:{tenant.pk}:{n}")
    return [event for event in usage_report_tenant(tenant=tenant) if event.kind == "usage"]


def test_a_dropped_event_is_found_and_the_resend_fixes_it(db, client, hourly_meter, stripe_api):  # noqa: F811
    tenant = tenant_billed_by("stripe", customer=stripe_api.Customer.create(email="leak@example.com").id)
    price = tenant.plan.overage_price_cents_per_hour
    overage(tenant, ALLOWANCE + 1800, 0)
    [dropped] = overage(tenant, 2 * HOUR + 1, 1)
    # The event is lost before any delivery (the watermark already counts it): reporting will never send it again.
    dropped.delete()
    assert deliveries_drain() == 1
    assert reconciliation_run(period_start=month())["gaps"] == [
        {"tenant": tenant.slug, "meter": "workspace_seconds", "provider": "stripe", "kind": "used_not_reported",
         "quantity": 2 * HOUR + 1,
         "amount_cents": overage_amount_cents(1800 + 2 * HOUR + 1, price) - overage_amount_cents(1800, price)}]
    assert usage_report_tenant(tenant=tenant) == []  # reporting alone never closes it

    gap = ReconciliationGap.objects.get(tenant=tenant)
    user = staff("resend_gap")
    response = resend_in_admin(client, user, [gap])
    assert "Re-sent" in response.content.decode()
    audit = AuditLog.objects.get(action="billing.gap_resent")
    assert (audit.tenant, audit.actor, audit.data["quantity"]) == (tenant, user, 2 * HOUR + 1)
    assert deliveries_drain() == 1

    report = reconciliation_run(period_start=month())
    assert (report["gaps"], report["revenue_at_risk_cents"], report["unchecked"]) == ([], 0, [])
    assert not ReconciliationGap.objects.exists()
    # Stripe's meter now holds the month's whole overage, as one event would have sent it.
    assert summed_hours(hourly_meter, tenant.billing_account.stripe_customer_id) == hours(1800 + 2 * HOUR + 1)


def test_a_dead_delivery_is_used_but_not_reported_and_the_resend_delivers_it(db, hourly_meter, stripe_api,  # noqa: F811
                                                                             settings):
    tenant = tenant_billed_by("stripe", customer=stripe_api.Customer.create(email="dead@example.com").id)
    [event] = overage(tenant, ALLOWANCE + HOUR, 0)
    Delivery.objects.filter(event=event).update(state="dead", attempts=12, last_error="transient: 503")
    [gap] = reconciliation_run(period_start=month())["gaps"]
    assert (gap["kind"], gap["quantity"], gap["amount_cents"]) == ("used_not_reported", HOUR, event.amount_cents)
    outcome = reconciliation_gap_resend(gap=ReconciliationGap.objects.get(), actor=None)
    assert outcome == {"event": None, "deliveries_due": 1}  # nothing was missing in Hearth: the delivery is due
    assert deliveries_drain() == 1
    assert reconciliation_run(period_start=month())["gaps"] == []


def test_the_invoice_provider_reported_but_not_billed_and_billed_but_not_metered(db, client):
    tenant = tenant_billed_by("invoice")
    [event] = overage(tenant, ALLOWANCE + HOUR, 0)
    deliveries_drain()
    InvoiceLine.objects.filter(event=event).delete()  # the line is lost after a successful delivery
    [gap] = reconciliation_run(period_start=month())["gaps"]
    assert (gap["kind"], gap["quantity"], gap["amount_cents"]) == ("reported_not_billed", HOUR, event.amount_cents)
    reconciliation_gap_resend(gap=ReconciliationGap.objects.get(), actor=None)
    deliveries_drain()
    assert reconciliation_run(period_start=month())["gaps"] == []

    # A usage event counted twice (e.g. a provider replay past its idempotency window) bills more than was used.
    duplicate = BillingEvent.objects.get(pk=event.pk)
    duplicate.pk, duplicate.identifier = None, event.identifier + ":again"
    duplicate.save()
    Delivery.objects.create(event=duplicate, provider="invoice")
    deliveries_drain()
    [gap] = reconciliation_run(period_start=month())["gaps"]
    assert (gap["kind"], gap["quantity"], gap["amount_cents"]) == ("billed_not_metered", HOUR, event.amount_cents)
    with pytest.raises(ServiceError, match="nothing to re-send"):
        reconciliation_gap_resend(gap=ReconciliationGap.objects.get(), actor=None)
    response = resend_in_admin(client, staff("resend_gap"), ReconciliationGap.objects.all())
    assert "credit the tenant" in response.content.decode()


def test_a_tenant_with_no_gaps_reports_none_and_money_is_integer_cents(db):
    clean = tenant_billed_by("invoice")
    overage(clean, ALLOWANCE + 1234, 0)
    deliveries_drain()
    within = tenant_billed_by("invoice")
    overage(within, HOUR, 0)  # inside the allowance: nothing billable, nothing sent
    leaking = tenant_billed_by("invoice")
    overage(leaking, ALLOWANCE + 7, 0)  # reported, not yet delivered

    out = StringIO()
    call_command("reconcile_billing", "--period", f"{month():%Y-%m}", "--json", stdout=out)
    report = json.loads(out.getvalue())
    assert set(report) >= {"period", "tenants", "gaps", "revenue_at_risk_cents"}
    assert (report["period"], report["tenants"]) == (f"{month():%Y-%m}", 3)
    assert {gap["tenant"] for gap in report["gaps"]} == {leaking.slug}
    [gap] = report["gaps"]
    amount = overage_amount_cents(7, leaking.plan.overage_price_cents_per_hour)
    assert (gap["quantity"], gap["amount_cents"], report["revenue_at_risk_cents"]) == (7, amount, amount)
    assert all(type(gap[key]) is int for key in ("quantity", "amount_cents"))
    assert type(report["revenue_at_risk_cents"]) is int

    human = StringIO()
    call_command("reconcile_billing", "--period", f"{month():%Y-%m}", stdout=human)
    assert f"{leaking.slug}  workspace_seconds  invoice  used_not_reported  7" in human.getvalue()


@pytest.mark.parametrize("period", ["2026-13", "2026-00", "26-03", "2026-3-1", "March", ""])
def test_the_command_refuses_a_bad_period_clearly(db, period):
    with pytest.raises(CommandError, match=r"The period must be a month written YYYY-MM \(e\.g\. 2026-03\)"):
        call_command("reconcile_billing", "--period", period)


def test_period_parse_and_the_default_month(db):
    assert period_parse("2026-03") == periods.month_bounds(period_parse("2026-03"))[0]
    assert reconciliation_run()["period"] == f"{periods.previous_month_start():%Y-%m}"


def test_a_provider_that_cannot_answer_leaves_its_billed_column_unchecked(db, settings):
    tenant = tenant_billed_by("stripe", customer="cus_unreachable")
    overage(tenant, ALLOWANCE + HOUR, 0)
    settings.STRIPE_API_BASE = "http://127.0.0.1:9"  # nothing listens: Stripe is unreachable
    report = reconciliation_run(period_start=month())
    assert report["unchecked"] == ["stripe"]
    assert [gap["kind"] for gap in report["gaps"]] == ["used_not_reported"]  # not delivered yet


def test_the_staff_overview_shows_revenue_at_risk_and_the_resend_needs_its_permission(db, client):
    tenant = tenant_billed_by("invoice")
    overage(tenant, ALLOWANCE + HOUR, 0)  # never delivered
    reconciliation_run(period_start=month())
    gap = ReconciliationGap.objects.get()

    viewer = staff()
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_tenant"))
    viewer = UserFactory._meta.model.objects.get(pk=viewer.pk)
    client.force_login(viewer)
    overview = client.get(reverse("admin:tenants_overview")).content.decode()
    cents = gap.amount_cents
    assert "Revenue at risk (reconciliation)" in overview
    assert f"{cents // 100}.{cents % 100:02d} in 1 gaps" in overview
    listing = client.get(reverse("admin:billing_reconciliationgap_changelist")).content.decode()
    assert tenant.slug in listing and "used but not reported" in listing

    resend_in_admin(client, viewer, [gap])
    gap.refresh_from_db()
    assert gap.resent_at is None and not AuditLog.objects.filter(action="billing.gap_resent").exists()
    resend_in_admin(client, staff("resend_gap"), [gap])
    gap.refresh_from_db()
    assert gap.resent_at is not None


def test_the_nightly_task_reconciles_the_previous_and_the_open_month(db, settings):
    from billing import tasks

    assert settings.CELERY_BEAT_SCHEDULE["billing-reconcile"]["task"] == "billing.tasks.reconcile"
    tenant = tenant_billed_by("invoice")
    overage(tenant, ALLOWANCE + HOUR, 0)  # not delivered: a gap in the open month
    assert tasks.reconcile() == [0, overage_amount_cents(HOUR, tenant.plan.overage_price_cents_per_hour)]
    assert set(ReconciliationGap.objects.values_list("period_start", flat=True)) == {month()}
