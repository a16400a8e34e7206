"""Tenants' Stripe subscriptions: each tenant's customer (and the BillingAccount naming it), what choosing a plan does
(Checkout, a prorated change, a downgrade or Free at the period's end), the subscription's state applied to the
tenant's plan and payment status, and the end of a past-due grace period (suspended for payment).

The state is always re-read from Stripe under the tenant's row lock, never taken from an event's snapshot, so events
processed late, twice or at the same time leave the tenant as Stripe has it now.
"""
import logging
from datetime import UTC, datetime, timedelta

import stripe
from django.conf import settings
from django.core.mail import send_mail
from django.db import transaction
from django.template.loader import render_to_string
from django.utils import timezone
from djstripe import models as djstripe_models

from billing.catalogue import (
    base_lookup_key,
    checkout_line_items,
    overage_lookup_key,
    plan_of_lookup_key,
    prices_by_lookup_key,
    stripe_options,
)
from billing.models import BillingAccount, Provider
from tenants import policy, services
from tenants.audit import audit_record
from tenants.events import event_emit
from tenants.exceptions import ServiceError, Unavailable
from tenants.models import Plan, Role, Tenant
from tenants.services import BILLING_ACTOR, PlanRequest

log = logging.getLogger(__name__)

PAID = ("active", "trialing")
OVERDUE = ("past_due", "unpaid")
ENDED = ("canceled", "incomplete_expired")
LIVE = PAID + OVERDUE


def tenant_of_request(request):
    """dj-stripe's DJSTRIPE_SUBSCRIBER_MODEL_REQUEST_CALLBACK: the portal's current tenant."""
    from tenants.portal import current_membership

    membership = current_membership(request)
    return membership.tenant if membership else None


# --- the customer --------------------------------------------------------------------------------------------------


def _account():
    """dj-stripe syncs objects under their Stripe account; its row is made on first use."""
    return djstripe_models.Account.get_or_retrieve_for_api_key(settings.STRIPE_SECRET_KEY)


def customer_get_or_create(*, tenant):
    """The tenant's Stripe customer (dj-stripe's Customer, subscriber = the tenant), created on first need, and its
    BillingAccount naming it, in one transaction: the Stripe provider finds the customer there."""
    with transaction.atomic():
        customer, _ = djstripe_models.Customer.get_or_create(subscriber=tenant, livemode=settings.STRIPE_LIVE_MODE,
                                                             api_key=settings.STRIPE_SECRET_KEY,
                                                             metadata={"hearth_tenant": tenant.slug})
        billing_account_link_stripe(tenant=tenant, customer_id=customer.id)
    return customer


def billing_account_link_stripe(*, tenant, customer_id):
    """Record the tenant's Stripe customer on its BillingAccount (made with provider `stripe` if missing). An
    account staff set up keeps its providers (an Enterprise contract billed by invoice stays so until staff add
    Stripe); one without providers gets Stripe. Audited when it changes."""
    account, created = BillingAccount.objects.select_for_update().get_or_create(
        tenant=tenant, defaults={"providers": [Provider.STRIPE], "stripe_customer_id": customer_id})
    if not created:
        if account.stripe_customer_id == customer_id and account.providers:
            return account
        before = {"providers": list(account.providers), "stripe_customer_id": account.stripe_customer_id}
        account.stripe_customer_id = customer_id
        account.providers = account.providers or [Provider.STRIPE]
        account.save(update_fields=["stripe_customer_id", "providers", "updated_at"])
    audit_record(tenant=tenant, actor=BILLING_ACTOR, action="billing.account_linked", target=customer_id,
                 data={"providers": list(account.providers), **({} if created else {"before": before})})
    return account


def customer_id_of(tenant):
    """The tenant's Stripe customer id, or None: the providers' way to the customer (meter events)."""
    return (djstripe_models.Customer.objects.filter(subscriber=tenant, livemode=settings.STRIPE_LIVE_MODE)
            .values_list("id", flat=True).first())


def tenant_id_of_customer(customer_id):
    """The tenant whose customer Hearth made with this id, else None: nothing in an event can name another tenant."""
    if not customer_id:
        return None
    return (djstripe_models.Customer.objects.filter(id=customer_id, subscriber__isnull=False)
            .values_list("subscriber_id", flat=True).first())


# --- what choosing a plan does -------------------------------------------------------------------------------------


def plan_request(*, tenant, plan, actor, return_url):
    """tenants.services.tenant_request_plan's paid path (its checks are done): the PlanRequest of what happened."""
    try:
        return _plan_request(tenant=tenant, plan=plan, actor=actor, return_url=return_url)
    except stripe.StripeError as exc:
        log.exception("Stripe failed while %s chose the %s plan", tenant.slug, plan.slug)
        raise Unavailable("Payments cannot be reached right now; nothing was changed. Try again in a few minutes.",
                          code="billing_unavailable") from exc


def _plan_request(*, tenant, plan, actor, return_url):
    live = bool(tenant.subscription_id) and tenant.subscription_status in LIVE
    if tenant.plan_id != plan.pk:
        # Before any payment: a plan the tenant does not fit is refused whichever way it would start.
        _fits_check(tenant=tenant, plan=plan)
    if policy.is_free_plan(plan):
        if live:
            return _cancel_at_period_end(tenant=tenant, plan=plan, actor=actor)
        if tenant.plan_id == plan.pk:
            return PlanRequest(outcome="unchanged", tenant=tenant)
        # No subscription pays for the current plan (staff set it): Free costs nothing and starts now.
        tenant = services.tenant_change_plan(tenant=tenant, plan=plan, actor=BILLING_ACTOR)
        return PlanRequest(outcome="changed", tenant=tenant)
    if plan.monthly_price_cents is None:
        raise ServiceError(f"The {plan.name} plan is arranged with Hearth's staff, not chosen here.",
                           code="plan_not_offered", field="plan")
    if not live:
        return _checkout(tenant=tenant, plan=plan, actor=actor, return_url=return_url)
    if tenant.plan_id == plan.pk:
        if tenant.pending_plan_id is None:
            return PlanRequest(outcome="unchanged", tenant=tenant)
        return _keep_current_plan(tenant=tenant, actor=actor)
    current_price = tenant.plan.monthly_price_cents
    if current_price is None or plan.monthly_price_cents >= current_price:
        return _change_now(tenant=tenant, plan=plan, actor=actor)
    return _downgrade_at_period_end(tenant=tenant, plan=plan, actor=actor)


def _fits_check(*, tenant, plan):
    """A downgrade the tenant no longer fits is refused with the plan limits' own errors."""
    from metering.selectors import storage_current

    policy.plan_seats_check(tenant=tenant, plan=plan, members=tenant.memberships.count())
    policy.plan_storage_check(tenant=tenant, plan=plan, stored_bytes=storage_current(tenant=tenant))


def _checkout(*, tenant, plan, actor, return_url):
    try:
        line_items = checkout_line_items(plan)
    except LookupError as exc:
        log.error("checkout for %s: %s", tenant.slug, exc)
        raise ServiceError(f"The {plan.name} plan cannot be bought right now; try again later.",
                           code="billing_unavailable") from exc
    customer = customer_get_or_create(tenant=tenant)
    metadata = {"hearth_tenant": tenant.slug, "hearth_plan": plan.slug}
    separator = "&" if "?" in return_url else "?"
    session = stripe.checkout.Session.create(
        mode="subscription", customer=customer.id, line_items=line_items, client_reference_id=str(tenant.pk),
        success_url=f"{return_url}{separator}checkout={{CHECKOUT_SESSION_ID}}", cancel_url=return_url,
        metadata=metadata, subscription_data={"metadata": metadata}, **stripe_options())
    with transaction.atomic():
        audit_record(tenant=tenant, actor=actor, action="billing.checkout_started", target=plan.slug,
                     data={"session": session.id, "customer": customer.id})
    return PlanRequest(outcome="checkout", tenant=tenant, checkout_url=session.url)


def _items_for(subscription, plan):
    """The item changes that put `subscription` on `plan`'s prices; items keep their ids (and quantities)."""
    keys = [base_lookup_key(plan)] + ([overage_lookup_key(plan)] if plan.allows_overage else [])
    prices = prices_by_lookup_key(*keys)
    if base_lookup_key(plan) not in prices or (plan.allows_overage and overage_lookup_key(plan) not in prices):
        raise ServiceError(f"The {plan.name} plan cannot be bought right now; try again later.",
                           code="billing_unavailable")
    changes, metered_seen = [], False
    for item in subscription["items"]["data"]:
        if (item["price"].get("recurring") or {}).get("usage_type") == "metered":
            metered_seen = True
            if plan.allows_overage:
                changes.append({"id": item["id"], "price": prices[overage_lookup_key(plan)].id})
            else:
                changes.append({"id": item["id"], "deleted": True})
        else:
            changes.append({"id": item["id"], "price": prices[base_lookup_key(plan)].id})
    if plan.allows_overage and not metered_seen:
        changes.append({"price": prices[overage_lookup_key(plan)].id})
    return changes


def _change_now(*, tenant, plan, actor):
    """An upgrade: the subscription's items move to the plan's prices now, prorated as Stripe prorates."""
    subscription = stripe.Subscription.retrieve(tenant.subscription_id, **stripe_options())
    stripe.Subscription.modify(subscription.id, items=_items_for(subscription, plan),
                               proration_behavior="create_prorations", cancel_at_period_end=False,
                               **stripe_options())
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        locked.pending_plan = None  # the change replaces a scheduled downgrade or cancellation
        locked.save(update_fields=["pending_plan"])
        audit_record(tenant=tenant, actor=actor, action="billing.plan_change_requested", target=plan.slug,
                     data={"from": tenant.plan.slug, "to": plan.slug, "subscription": subscription.id})
    # The update's own webhook would do the same; applying it now shows the owner the new plan at once.
    return PlanRequest(outcome="changed", tenant=subscription_sync(tenant=tenant))


def _downgrade_at_period_end(*, tenant, plan, actor):
    if tenant.pending_plan_id is not None and policy.is_free_plan(tenant.pending_plan):
        # A cancellation was scheduled: the subscription goes on, on the cheaper plan.
        stripe.Subscription.modify(tenant.subscription_id, cancel_at_period_end=False, **stripe_options())
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        locked.pending_plan = plan
        locked.save(update_fields=["pending_plan"])
        audit_record(tenant=locked, actor=actor, action="billing.downgrade_scheduled", target=plan.slug,
                     data={"from": tenant.plan.slug, "to": plan.slug, "at": _iso(locked.current_period_end)})
        event_emit(type="billing.downgrade_scheduled", tenant=locked,
                   payload={"from": tenant.plan.slug, "to": plan.slug, "at": _iso(locked.current_period_end)})
    return PlanRequest(outcome="scheduled", tenant=locked)


def _cancel_at_period_end(*, tenant, plan, actor):
    """Free with a paid subscription: it is cancelled at the period's end, and the tenant moves to Free then."""
    stripe.Subscription.modify(tenant.subscription_id, cancel_at_period_end=True, **stripe_options())
    with transaction.atomic():
        audit_record(tenant=tenant, actor=actor, action="billing.cancel_requested", target=tenant.subscription_id,
                     data={"at": _iso(tenant.current_period_end)})
    return PlanRequest(outcome="scheduled", tenant=subscription_sync(tenant=tenant))


def _keep_current_plan(*, tenant, actor):
    """Choosing the current plan again drops a scheduled downgrade or cancellation."""
    stripe.Subscription.modify(tenant.subscription_id, cancel_at_period_end=False, **stripe_options())
    with transaction.atomic():
        locked = Tenant.objects.select_for_update().get(pk=tenant.pk)
        locked.pending_plan = None
        locked.save(update_fields=["pending_plan"])
        audit_record(tenant=locked, actor=actor, action="billing.pending_change_dropped", target=tenant.plan.slug)
    return PlanRequest(outcome="unchanged", tenant=subscription_sync(tenant=locked))


# --- the subscription's state drives the tenant --------------------------------------------------------------------


def subscription_sync(*, tenant, now=None):
    """Read the tenant's subscriptions from Stripe under its row lock and apply the one that counts. Returns the
    tenant as it is afterwards. Safe to call at any time, any number of times, from any number of processes."""
    now = now or timezone.now()
    with transaction.atomic():
        # Locked before Stripe is read: whoever holds the lock last reads the newest state.
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if policy.is_offboarded(tenant):
            return tenant
        customer_id = customer_id_of(tenant)
        if customer_id is None:
            return tenant
        subscriptions = list(stripe.Subscription.list(customer=customer_id, status="all", limit=100,
                                                      **stripe_options()).auto_paging_iter())
        subscription = _the_subscription(subscriptions, current_id=tenant.subscription_id)
        if subscription is None:
            return tenant
        _account()
        djstripe_models.Subscription.sync_from_stripe_data(subscription, api_key=settings.STRIPE_SECRET_KEY)
        _apply(tenant=tenant, subscription=subscription, now=now)
    return Tenant.objects.select_related("plan", "pending_plan").get(pk=tenant.pk)


def _the_subscription(subscriptions, *, current_id):
    """The live subscription (the newest if several were bought), else the one the tenant had, else the newest."""
    live = sorted((s for s in subscriptions if s.status in LIVE), key=lambda s: s.created, reverse=True)
    if live:
        return live[0]
    current = next((s for s in subscriptions if s.id == current_id), None)
    if current is not None:
        return current
    return max(subscriptions, key=lambda s: s.created, default=None)


def _period_end(subscription):
    # Newer Stripe API versions keep the period on the items only.
    items = subscription["items"]["data"]
    end = subscription.get("current_period_end") or (items[0].get("current_period_end") if items else None)
    return datetime.fromtimestamp(end, UTC) if end else None


def _plan_of(subscription):
    """The sold plan whose monthly price the subscription pays, by the price's lookup key; None if none is."""
    for item in subscription["items"]["data"]:
        plan = plan_of_lookup_key((item.get("price") or {}).get("lookup_key"))
        if plan is not None:
            return plan
    return None


def _apply(*, tenant, subscription, now):
    """Bring the locked tenant in line with `subscription`'s current state; audit and announce what changed."""
    status = subscription.status
    if status not in LIVE and status not in ENDED:
        return  # incomplete: nothing is paid yet, the tenant keeps its plan
    if status in ENDED and tenant.subscription_id != subscription.id:
        # Not the subscription that pays for the plan (already ended, or one that never did): a plan staff set
        # since then stays.
        return
    before = {"subscription": tenant.subscription_id, "status": tenant.subscription_status,
              "period_end": _iso(tenant.current_period_end), "pending_plan": getattr(tenant.pending_plan, "slug", None),
              "payment_due_by": _iso(tenant.payment_due_by)}
    old_period_end = tenant.current_period_end
    target = tenant.plan
    free = Plan.objects.get(slug="free")
    if status in ENDED:
        target = free
        tenant.subscription_id, tenant.current_period_end = "", None
        tenant.pending_plan, tenant.payment_due_by = None, None
    else:
        tenant.subscription_id = subscription.id
        tenant.current_period_end = _period_end(subscription)
        paid_plan = _plan_of(subscription)
        if paid_plan is None:
            log.error("subscription %s of %s pays for no plan Hearth sells", subscription.id, tenant.slug)
        renewed = old_period_end is not None and tenant.current_period_end is not None and \
            tenant.current_period_end > old_period_end
        if renewed and tenant.pending_plan is not None and not policy.is_free_plan(tenant.pending_plan):
            # The emulator has no subscription schedules: a downgrade is applied by Hearth at the renewal.
            subscription = stripe.Subscription.modify(
                subscription.id, items=_items_for(subscription, tenant.pending_plan), proration_behavior="none",
                **stripe_options())
            paid_plan, tenant.pending_plan = tenant.pending_plan, None
        if subscription.get("cancel_at_period_end"):
            tenant.pending_plan = free
        elif tenant.pending_plan is not None and policy.is_free_plan(tenant.pending_plan):
            tenant.pending_plan = None  # the cancellation was withdrawn (e.g. in Stripe's customer portal)
        # past_due follows a paid first invoice (an unpaid first one is `incomplete`): its plan holds in the grace.
        target = paid_plan or target
        if status in PAID:
            tenant.payment_due_by = None
        elif tenant.payment_due_by is None:
            tenant.payment_due_by = now + timedelta(days=settings.BILLING_GRACE_DAYS)
            transaction.on_commit(lambda t=tenant: owners_mail_past_due(tenant=t))
    tenant.subscription_status = status
    tenant.save(update_fields=["subscription_id", "subscription_status", "current_period_end", "pending_plan",
                               "payment_due_by"])
    after = {"subscription": tenant.subscription_id, "status": tenant.subscription_status,
             "period_end": _iso(tenant.current_period_end), "pending_plan": getattr(tenant.pending_plan, "slug", None),
             "payment_due_by": _iso(tenant.payment_due_by)}
    changed = {key: {"from": before[key], "to": after[key]} for key in before if before[key] != after[key]}
    if changed:
        audit_record(tenant=tenant, actor=BILLING_ACTOR, action="billing.subscription_changed",
                     target=subscription.id, data=changed)
        event_emit(type="billing.subscription_changed", tenant=tenant,
                   payload={"subscription": subscription.id, "customer": subscription.customer, **after,
                            "changed": sorted(changed)})
    if target.pk != tenant.plan_id:
        services.tenant_change_plan(tenant=tenant, plan=target, actor=BILLING_ACTOR)


def _iso(moment):
    return moment.isoformat() if moment else None


def owners_mail_past_due(*, tenant):
    """Tell the owners a payment failed and when opens stop; a refused mail is logged (the banner says it too)."""
    owners = list(tenant.memberships.filter(role=Role.OWNER).values_list("user__email", flat=True))
    if not owners:
        return
    context = {"tenant": tenant, "due_by": tenant.payment_due_by,
               "billing_url": f"{settings.HEARTH_BASE_URL.rstrip('/')}/billing/"}
    subject = render_to_string("billing/email/past_due_subject.txt", context).strip()
    body = render_to_string("billing/email/past_due_message.txt", context)
    try:
        send_mail(subject, body, None, owners)
    except Exception:  # SMTP failures come in many types; the state is already stored
        log.exception("could not mail the past-due notice of %s", tenant.slug)


# --- the grace period's end ----------------------------------------------------------------------------------------


def payment_grace_expire(*, now=None):
    """Suspend for payment every past-due tenant whose grace ran out (Celery beat, every minute). Idempotent.
    Returns the number of tenants suspended by this run."""
    now = now or timezone.now()
    overdue = (Tenant.objects.filter(subscription_status__in=OVERDUE, payment_due_by__lte=now)
               .exclude(status=Tenant.Status.OFFBOARDED).order_by("pk"))
    return sum(tenant_payment_suspend(tenant=tenant, now=now) for tenant in overdue)


def tenant_payment_suspend(*, tenant, now=None):
    """The moment a past-due tenant's grace runs out: audit row and domain event once per grace period, and its
    running sessions ended (opens already answer 402; data is kept and owners can still pay). True if it was
    suspended by this call."""
    from workspaces.models import Session
    from workspaces.services import sessions_end_for_tenant

    now = now or timezone.now()
    with transaction.atomic():
        tenant = Tenant.objects.select_for_update().get(pk=tenant.pk)
        if tenant.subscription_status not in OVERDUE or not policy.is_payment_overdue(tenant, now=now):
            return False
        due_by = _iso(tenant.payment_due_by)
        # The grace period's own due date marks it: a later past-due spell gets its own row.
        first = not tenant.audit_log.filter(action="billing.payment_suspended", target=due_by).exists()
        if first:
            live = Session.objects.filter(tenant=tenant, ended_at__isnull=True).count()
            audit_record(tenant=tenant, actor=BILLING_ACTOR, action="billing.payment_suspended", target=due_by,
                         data={"subscription": tenant.subscription_id, "status": tenant.subscription_status,
                               "sessions_ended": live})
            event_emit(type="billing.payment_suspended", tenant=tenant,
                       payload={"subscription": tenant.subscription_id, "due_by": due_by})
    # After commit (ending a session releases its container); repeated by every run, so a crash in between or a
    # session that slipped in is ended by the next one.
    sessions_end_for_tenant(tenant=tenant, reason=Session.EndReason.SUSPENDED)
    return first


# --- what the Billing page and GET /api/v1/billing show -------------------------------------------------------------


def upcoming_invoice(*, tenant):
    """The next invoice's preview (amount in minor units, currency), or None without a live subscription."""
    if not tenant.subscription_id or tenant.subscription_status not in LIVE:
        return None
    try:
        preview = stripe.Invoice.create_preview(subscription=tenant.subscription_id, **stripe_options())
    except stripe.StripeError:
        log.warning("no invoice preview for %s", tenant.slug, exc_info=True)
        return None
    return {"amount_cents": preview.amount_due, "currency": preview.currency}


def portal_session_create(*, tenant, actor, return_url):
    """A Stripe customer portal session (cards, invoices) for an owner; returns its URL."""
    policy.require_owner(tenant=tenant, actor=actor, message="Only the tenant's owners manage its payment.")
    try:
        customer = customer_get_or_create(tenant=tenant)
        session = stripe.billing_portal.Session.create(customer=customer.id, return_url=return_url,
                                                       **stripe_options())
    except stripe.StripeError as exc:
        log.exception("no customer portal session for %s", tenant.slug)
        raise Unavailable("Stripe's customer portal cannot be reached right now; try again in a few minutes.",
                          code="billing_unavailable") from exc
    return session.url


def billing_overview(*, tenant, show_amounts):
    """The plan, the subscription's status and period, and (for owners) the next invoice: the Billing page's and
    GET /api/v1/billing's one read. `status` is Stripe's, or `none` without a subscription."""
    upcoming = upcoming_invoice(tenant=tenant) if show_amounts else None
    return {
        "plan": tenant.plan.slug,
        "plan_name": tenant.plan.name,
        "pending_plan": tenant.pending_plan.slug if tenant.pending_plan_id else None,
        "status": tenant.subscription_status or "none",
        "period_end": tenant.current_period_end,
        "payment_due_by": tenant.payment_due_by,
        "upcoming_amount_cents": upcoming["amount_cents"] if upcoming else None,
        "currency": (upcoming or {}).get("currency") or tenant.plan.currency,
    }


def subscription_cancel_for_offboarding(tenant):
    """tenants.offboarding teardown hook: a deleted tenant is not charged again (its subscription ends now)."""
    if not tenant.subscription_id or tenant.subscription_status not in LIVE:
        return
    try:
        stripe.Subscription.cancel(tenant.subscription_id, **stripe_options())
    except stripe.InvalidRequestError:
        log.warning("subscription %s of %s was already gone", tenant.subscription_id, tenant.slug, exc_info=True)
    except stripe.StripeError as exc:
        raise Unavailable("Stripe cannot be reached to end the subscription, so the organisation is not deleted "
                          "yet; try again in a few minutes.", code="billing_unavailable") from exc
    audit_record(tenant=tenant, actor=BILLING_ACTOR, action="billing.subscription_canceled",
                 target=tenant.subscription_id, data={"reason": "offboarding"})
