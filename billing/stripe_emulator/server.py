"""The emulator's aiohttp application: our routes first, then every localstripe route we do not replace."""
import hashlib
import html
import pickle
import time

from aiohttp import web
from localstripe import server as ls_server
from localstripe.errors import UserError
from localstripe.resources import store

from billing.stripe_emulator.resources import (
    Account,
    CheckoutSession,
    Meter,
    MeterEvent,
    PortalSession,
    Price,
    Subscription,
    SubscriptionItem,
    WebhookEndpoint,
    invoice_preview,
    product_features,
)

DEFAULT_STATE_PATH = "/tmp/localstripe.pickle"
IDEMPOTENCY_TTL_SECONDS = 24 * 3600


def use_state_path(path):
    """Keep the store at `path` instead of localstripe's fixed /tmp/localstripe.pickle."""

    def load():
        try:
            with open(path, "rb") as f:
                saved = pickle.load(f)
        except FileNotFoundError:
            return
        store.clear()
        store.update(saved)

    def dump():
        with open(path, "wb") as f:
            pickle.dump(dict(store), f, protocol=pickle.HIGHEST_PROTOCOL)

    # Instance attributes win over Store's methods, also for the calls Store makes on itself; dump() saves a
    # plain dict so that these functions are not pickled with the store.
    store.try_load_from_disk = load
    store.dump_to_disk = dump


def keep_in_memory():
    """Save nothing: the store lives as long as the process, and no write pickles it."""
    store.try_load_from_disk = lambda: None
    store.dump_to_disk = lambda: None


@web.middleware
async def unknown_url_middleware(request, handler):
    """An unknown URL answers in Stripe's JSON, so the SDK raises InvalidRequestError and not a parse error."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as missing:
        if request.path.startswith("/_emulator/"):
            raise
        return ls_server.json_response(
            {"error": {"type": "invalid_request_error",
                       "message": f"Unrecognized request URL ({request.method}: {request.path}). "
                                  "The offline Stripe does not emulate it."}},
            status=missing.status)


@web.middleware
async def auth_middleware(request, handler):
    # The hosted pages and the paying-customer helpers are reached without a secret key, as a browser reaches Stripe's.
    if request.path.startswith("/_emulator/"):
        return await handler(request)
    return await ls_server.auth_middleware(request, handler)


@web.middleware
async def idempotency_middleware(request, handler):
    """A POST with an Idempotency-Key replays the first response for that key (Stripe keeps keys at least 24 hours)."""
    key = request.headers.get("Idempotency-Key")
    if request.method != "POST" or not key:
        return await handler(request)
    fingerprint = hashlib.sha256(request.path.encode() + b"\0" + await request.read()).hexdigest()
    slot = "idempotency:" + key
    seen = store.get(slot)
    if seen is not None and seen["at"] > time.time() - IDEMPOTENCY_TTL_SECONDS:
        if seen["fingerprint"] != fingerprint:
            error = UserError(400, "Keys for idempotent requests can only be used with the same parameters they "
                                   f"were first used with. Try using a key other than '{key}' if you meant to "
                                   "execute a different request.")
            error.body["error"]["type"] = "idempotency_error"
            raise error
        return web.Response(body=seen["body"], status=seen["status"], content_type="application/json",
                            headers={"Idempotent-Replayed": "true", "Idempotency-Key": key})
    try:
        response = await handler(request)
    except UserError as error:
        response = error.to_response()
    if response.status not in (409, 429) and isinstance(response.body, bytes):
        store[slot] = {"at": time.time(), "fingerprint": fingerprint, "status": response.status,
                       "body": response.body}
    response.headers["Idempotency-Key"] = key
    return response


def with_origin(cls):
    """Create handler for objects whose hosted page URL points back at this server, however it was reached."""

    async def create(request):
        data = await ls_server.get_post_data(request) or {}
        expand = data.pop("expand", None)
        data["_origin"] = f"{request.scheme}://{request.host}"
        return ls_server.json_response(cls._api_create(**data)._export(expand=expand))

    return create


async def meter_event_create(request):
    data = await ls_server.get_post_data(request) or {}
    data.pop("expand", None)
    return ls_server.json_response(MeterEvent._api_create(**data)._export())


def page(title, body):
    return web.Response(text=f"<!doctype html><html><head><meta charset=utf-8><title>{html.escape(title)}</title>"
                             f"</head><body style='font-family:sans-serif;max-width:40em;margin:3em auto'>"
                             f"<p><small>Offline Stripe (emulator)</small></p><h1>{html.escape(title)}</h1>"
                             f"{body}</body></html>", content_type="text/html")


async def checkout_page(request):
    session = store.get("checkout.session:" + request.match_info["id"])
    if session is None:
        raise web.HTTPNotFound()
    if request.method == "POST":
        form = await request.post()
        try:
            CheckoutSession._api_complete(session.id, card_number=form.get("card_number") or "4242424242424242")
        except UserError as error:
            return page("Payment failed", f"<p>{html.escape(error.body['error'].get('message', ''))}</p>"
                                          f"<p><a href='{html.escape(session.url)}'>Try again</a></p>")
        if session.success_url:
            raise web.HTTPSeeOther(session.success_url.replace("{CHECKOUT_SESSION_ID}", session.id))
        return page("Paid", "<p>The subscription is active.</p>")
    total = f"{session.amount_total / 100:.2f} {session.currency.upper()}"
    cancel = (f" <a href='{html.escape(session.cancel_url)}'>Cancel</a>" if session.cancel_url else "")
    return page("Subscribe", f"<p>Due today: {html.escape(total)}</p><form method=post>"
                             f"<label>Card number <input name=card_number value=4242424242424242></label> "
                             f"<button type=submit>Pay</button>{cancel}</form>"
                             f"<p><small>4000000000000341 is declined.</small></p>")


async def portal_page(request):
    session = store.get("billing_portal.session:" + request.match_info["id"])
    if session is None:
        raise web.HTTPNotFound()
    back = f"<p><a href='{html.escape(session.return_url)}'>Return</a></p>" if session.return_url else ""
    return page("Billing portal", f"<p>Cards and invoices of {html.escape(session.customer)} are managed here "
                                  f"in Stripe; the emulator shows nothing more.</p>{back}")


async def complete_checkout(request):
    data = await ls_server.get_post_data(request) or {}
    return ls_server.json_response(CheckoutSession._api_complete(request.match_info["id"], **data)._export())


async def advance_subscription(request):
    data = await ls_server.get_post_data(request) or {}
    fail = bool(ls_server.unflatten_data(request.query).get("fail_payment") or data.get("fail_payment"))
    if isinstance(data.get("fail_payment"), str):
        fail = data["fail_payment"].lower() == "true"
    subscription = Subscription._api_retrieve(request.match_info["id"])
    return ls_server.json_response(subscription._advance(fail_payment=fail)._export())


def crud_routes(cls, base, verbs=("create", "retrieve", "update", "delete", "list")):
    makers = {"create": ("POST", base, ls_server.api_create),
              "retrieve": ("GET", base + "/{id}", ls_server.api_retrieve),
              "update": ("POST", base + "/{id}", ls_server.api_update),
              "delete": ("DELETE", base + "/{id}", ls_server.api_delete),
              "list": ("GET", base, ls_server.api_list_all)}
    return [(makers[v][0], makers[v][1], makers[v][2](cls, makers[v][1])) for v in verbs]


def build_app():
    app = web.Application(middlewares=[unknown_url_middleware, ls_server.error_middleware, auth_middleware,
                                       idempotency_middleware, ls_server.save_store_middleware])
    app.on_response_prepare.append(ls_server.add_cors_headers)
    routes = [
        ("GET", "/v1/account", ls_server.api_extra(Account._api_retrieve_own, "/v1/account")),
        *crud_routes(Account, "/v1/accounts", ("retrieve",)),
        *crud_routes(Price, "/v1/prices", ("create", "retrieve", "update", "list")),
        ("POST", "/v1/invoices/create_preview",
         ls_server.api_extra(invoice_preview, "/v1/invoices/create_preview")),
        ("GET", "/v1/products/{id}/features", ls_server.api_extra(product_features, "/v1/products/{id}/features")),
        *crud_routes(Subscription, "/v1/subscriptions"),
        *crud_routes(SubscriptionItem, "/v1/subscription_items"),
        ("POST", "/v1/checkout/sessions", with_origin(CheckoutSession)),
        *crud_routes(CheckoutSession, "/v1/checkout/sessions", ("retrieve", "list")),
        ("GET", "/v1/checkout/sessions/{id}/line_items",
         ls_server.api_extra(CheckoutSession._api_list_line_items, "/v1/checkout/sessions/{id}/line_items")),
        ("POST", "/v1/checkout/sessions/{id}/expire",
         ls_server.api_extra(CheckoutSession._api_expire, "/v1/checkout/sessions/{id}/expire")),
        *crud_routes(Meter, "/v1/billing/meters", ("create", "retrieve", "update", "list")),
        ("POST", "/v1/billing/meters/{id}/deactivate",
         ls_server.api_extra(Meter._api_deactivate, "/v1/billing/meters/{id}/deactivate")),
        ("POST", "/v1/billing/meters/{id}/reactivate",
         ls_server.api_extra(Meter._api_reactivate, "/v1/billing/meters/{id}/reactivate")),
        ("GET", "/v1/billing/meters/{id}/event_summaries",
         ls_server.api_extra(Meter._api_event_summaries, "/v1/billing/meters/{id}/event_summaries")),
        ("POST", "/v1/billing/meter_events", meter_event_create),
        *crud_routes(WebhookEndpoint, "/v1/webhook_endpoints"),
        ("POST", "/v1/billing_portal/sessions", with_origin(PortalSession)),
        ("GET", "/_emulator/checkout/{id}", checkout_page),
        ("POST", "/_emulator/checkout/{id}", checkout_page),
        ("GET", "/_emulator/billing_portal/{id}", portal_page),
        ("POST", "/_emulator/checkout/sessions/{id}/complete", complete_checkout),
        ("POST", "/_emulator/subscriptions/{id}/advance", advance_subscription),
    ]
    for method, path, handler in routes:
        app.router.add_route(method, path, handler)
    ours = {(method, path) for method, path, _ in routes}
    for route in ls_server.app.router.routes():
        path = route.resource.canonical
        if (route.method, path) not in ours:
            app.router.add_route(route.method, path, route.handler)
    return app


def load_state():
    """Load the saved store and re-arm what localstripe keeps only in memory (the webhook targets)."""
    store.try_load_from_disk()
    WebhookEndpoint._reregister_all()
