"""The end of a past-due grace period: the tenant is suspended for payment once (audit row, domain event) and its
running sessions end; later runs change nothing."""
from datetime import timedelta

import time_machine
from django.utils import timezone

from billing.services import payment_grace_expire
from tenants.models import AuditLog, OutboxEvent, Plan
from tests.factories import MembershipFactory, TenantFactory
from workspaces import services as workspace_services
from workspaces.models import Container, Node, Session, WorkspaceTemplate


def live_session(tenant, user, started_at):
    template = WorkspaceTemplate.objects.filter(enabled=True).first()
    node = Node.objects.create(name=f"grace-{tenant.slug}", engine_url="unix:///nonexistent.sock", enabled=False)
    workspace = workspace_services.workspace_create(tenant=tenant, owner=user, name="w", template=template)
    container = Container.objects.create(node=node, template=template, state=Container.State.CLAIMED)
    return Session.objects.create(tenant=tenant, workspace=workspace, user=user, container=container,
                                  started_at=started_at, last_activity_at=started_at, metered_until=started_at)


def past_due_tenant(due_by):
    tenant = TenantFactory(plan=Plan.objects.get(slug="pro"), subscription_id="sub_grace",
                           subscription_status="past_due", payment_due_by=due_by)
    owner = MembershipFactory(tenant=tenant, role="owner")
    return tenant, owner


def test_the_grace_periods_end_suspends_once_and_ends_the_sessions(db):
    start = timezone.now()
    due_by = start + timedelta(days=7)
    tenant, owner = past_due_tenant(due_by)
    paying = TenantFactory(plan=Plan.objects.get(slug="pro"), subscription_status="active")
    session = live_session(tenant, owner.user, start)
    other = live_session(paying, MembershipFactory(tenant=paying, role="owner").user, start)

    with time_machine.travel(due_by - timedelta(minutes=1), tick=False):
        assert payment_grace_expire() == 0  # still in its grace: opens work, sessions run
    session.refresh_from_db()
    assert session.ended_at is None

    with time_machine.travel(due_by + timedelta(seconds=30), tick=False):
        assert payment_grace_expire() == 1
        assert payment_grace_expire() == 0  # idempotent: the beat runs every minute

    session.refresh_from_db()
    other.refresh_from_db()
    assert session.ended_at is not None and session.end_reason == Session.EndReason.SUSPENDED
    assert other.ended_at is None  # another tenant's session is untouched
    suspended = AuditLog.objects.get(tenant=tenant, action="billing.payment_suspended")
    assert suspended.target == due_by.isoformat() and suspended.actor_label == "stripe"
    assert suspended.data["sessions_ended"] == 1
    assert OutboxEvent.objects.filter(tenant=tenant, type="billing.payment_suspended").count() == 1
    assert not AuditLog.objects.filter(tenant=paying, action="billing.payment_suspended").exists()
    tenant.refresh_from_db()
    assert tenant.status == tenant.Status.ACTIVE  # data kept, members still sign in and pay


def test_a_later_past_due_spell_is_suspended_again(db):
    start = timezone.now()
    tenant, owner = past_due_tenant(start + timedelta(days=7))
    with time_machine.travel(start + timedelta(days=8), tick=False):
        assert payment_grace_expire() == 1
    # Paid, then overdue again: a new grace period with its own due date.
    tenant.payment_due_by = start + timedelta(days=40)
    tenant.save(update_fields=["payment_due_by"])
    with time_machine.travel(start + timedelta(days=41), tick=False):
        assert payment_grace_expire() == 1
    assert AuditLog.objects.filter(tenant=tenant, action="billing.payment_suspended").count() == 2
