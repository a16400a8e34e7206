"""The paying customer and the passing of time, played against the emulator: complete a Checkout, end a period."""
import json
import urllib.error
import urllib.request


class EmulatorError(Exception):
    def __init__(self, status, body):
        super().__init__(f"the Stripe emulator answered {status}: {body}")
        self.status = status
        self.body = body


def _post(api_base, path, data):
    request = urllib.request.Request(api_base.rstrip("/") + path, data=json.dumps(data).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise EmulatorError(error.code, error.read().decode(errors="replace")) from None


def checkout_complete(*, api_base, session_id, card_number="4242424242424242"):
    """Pay a Checkout Session as its customer would: the card is attached, the subscription created and paid,
    and checkout.session.completed and customer.subscription.created are sent. Returns the completed session.
    A declined card (4000000000000341) raises EmulatorError 402 and leaves the session open."""
    return _post(api_base, f"/_emulator/checkout/sessions/{session_id}/complete", {"card_number": card_number})


def subscription_advance(*, api_base, subscription_id, fail_payment=False):
    """End the subscription's current period now and start the next: cancels it if it was set to cancel at the
    period's end; otherwise invoices the next period and the metered usage of the ended one, and charges the card
    (or, with fail_payment, records a failed payment so the subscription becomes past_due). Returns it."""
    return _post(api_base, f"/_emulator/subscriptions/{subscription_id}/advance", {"fail_payment": fail_payment})


def subscription_make_past_due(*, api_base, subscription_id):
    """A renewal whose payment fails: the subscription becomes past_due and invoice.payment_failed is sent."""
    return subscription_advance(api_base=api_base, subscription_id=subscription_id, fail_payment=True)
