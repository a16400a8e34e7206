"""Stripe's webhooks: dj-stripe's endpoint verifies the signature and syncs its copy of the objects, then the
handlers registered here, by event type, bring the tenant in line with its subscription. The one place where a
Stripe event changes Hearth.

dj-stripe 2.11 offers only Django signals around its processing (its DJSTRIPE_WEBHOOK_EVENT_CALLBACK setting is
deprecated). Hearth connects two receivers (billing.apps) and keeps its own registry of handlers by event type:
`webhook_pre_process` locks the tenant before dj-stripe syncs, `webhook_post_process` runs the handler after it; both
inside dj-stripe's one transaction for a verified delivery, so a failing handler rolls the sync back too.
"""
import json
import logging
import urllib.request

from django.conf import settings
from django.urls import reverse
from djstripe import models as djstripe_models

from billing.subscriptions import subscription_sync, tenant_id_of_customer
from tenants.models import Tenant

log = logging.getLogger(__name__)

HANDLERS = {}


def handler(*event_types):
    """Register `fn(*, tenant, event)` for these Stripe event types; it runs once per event, with the tenant locked."""

    def register(fn):
        for event_type in event_types:
            HANDLERS[event_type] = fn
        return fn

    return register


def webhook_pre_process(sender, instance, **kwargs):
    """A verified delivery (dj-stripe's WebhookEventTrigger), before dj-stripe's sync: lock the event's tenant.

    Only the customer in the event is read from it, to know which tenant to lock; Hearth made that customer for that
    tenant, so nothing in an event can name another tenant. The tenant is locked before dj-stripe writes its rows:
    two deliveries for one subscription then take their locks in the same order, and the handler that runs last
    reads Stripe's newest state. A replayed event (dj-stripe has it already) changes nothing.
    """
    data = instance.json_body
    tenant_id = tenant_id_of_customer(_customer_of(data))
    tenant = Tenant.objects.select_for_update().filter(pk=tenant_id).first() if tenant_id else None
    replayed = djstripe_models.Event.objects.filter(id=data.get("id")).exists()
    instance._hearth_delivery = (tenant, replayed)


def webhook_post_process(sender, instance, **kwargs):
    """After dj-stripe's sync of the same delivery: Hearth's handler for its event type, if any."""
    tenant, replayed = getattr(instance, "_hearth_delivery", (None, True))
    data = instance.json_body
    fn = HANDLERS.get(data.get("type"))
    if replayed or fn is None:
        return
    if tenant is None:
        log.info("Stripe event %s (%s) is for no tenant's customer; ignored", data.get("id"), data.get("type"))
        return
    fn(tenant=tenant, event=data)


# --- where Stripe sends them ---------------------------------------------------------------------------------------

ENDPOINT_ID = "we_hearth"  # dj-stripe's row for Hearth's own endpoint (its uuid is in the URL Stripe posts to)


def webhook_endpoint_ensure(*, base_url=None):
    """dj-stripe's record of Hearth's webhook endpoint, with STRIPE_WEBHOOK_SECRET; its URL is what Stripe (or the
    offline Stripe) must post to. Made once; the secret and URL follow the settings."""
    endpoint = djstripe_models.WebhookEndpoint.objects.filter(id=ENDPOINT_ID).first()
    if endpoint is None:
        endpoint = djstripe_models.WebhookEndpoint(id=ENDPOINT_ID, enabled_events=["*"], status="enabled",
                                                   livemode=settings.STRIPE_LIVE_MODE, url="http://localhost/")
    endpoint.secret = settings.STRIPE_WEBHOOK_SECRET
    endpoint.save()
    path = reverse("djstripe:djstripe_webhook_by_uuid", kwargs={"uuid": endpoint.djstripe_uuid})
    url = f"{(base_url or settings.HEARTH_BASE_URL).rstrip('/')}{path}"
    if endpoint.url != url:
        endpoint.url = url
        endpoint.save(update_fields=["url"])
    return endpoint


def emulator_webhook_register(*, endpoint, api_base=None, name="hearth"):
    """Tell the offline Stripe to post every event to `endpoint`, signed with its secret. The emulator keeps this
    in memory only, so it is done again whenever it starts (billing_stripe_setup)."""
    api_base = (api_base or settings.STRIPE_API_HOST).rstrip("/")
    body = json.dumps({"url": endpoint.url, "secret": endpoint.secret}).encode()
    request = urllib.request.Request(f"{api_base}/_config/webhooks/{name}", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=settings.STRIPE_TIMEOUT) as response:
        response.read()


def _customer_of(data):
    obj = (data.get("data") or {}).get("object") or {}
    customer = obj.get("id") if obj.get("object") == "customer" else obj.get("customer")
    return customer.get("id") if isinstance(customer, dict) else customer


@handler("checkout.session.completed", "customer.subscription.created", "customer.subscription.updated",
         "customer.subscription.deleted", "customer.subscription.paused", "customer.subscription.resumed",
         "invoice.paid", "invoice.payment_failed")
def subscription_changed(*, tenant, event):
    """Whatever the event says, the tenant follows its subscription as Stripe has it now."""
    subscription_sync(tenant=tenant)
