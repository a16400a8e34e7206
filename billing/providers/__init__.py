"""The billing providers' shared interface, their errors and the registry the delivery loop finds them in.

A provider receives one billing event at a time with the delivery's idempotency key (the same on every attempt)
and answers its reference for what it recorded. It raises `TransientError` for what a later attempt may fix
(connection refused, timeouts, 5xx, rate limits) and `PermanentError` for what it never will (bad request, no
customer): the first is retried with back-off, the second is dead-lettered at once for staff to look at.
"""


class ProviderError(Exception):
    pass


class TransientError(ProviderError):
    pass


class PermanentError(ProviderError):
    pass


class BillingProvider:
    name = ""
    # A provider that writes Hearth's own tables (invoices) gets a savepoint per delivery; a remote one needs none.
    writes_database = False

    def accepts(self, event):
        """Whether this provider bills this kind of event (Stripe bills the plan fee through the subscription)."""
        return True

    def deliver(self, event, *, idempotency_key):
        """Send or record the event; return the provider's reference. Repeating it with the same key is harmless."""
        raise NotImplementedError

    def billed_usage(self, *, period_start, tenants):
        """What this provider billed of usage beyond the allowance in a billing month, for reconciliation:
        {(tenant id, meter slug): (quantity in the meter's unit, amount_cents)} for `tenants` (loaded with their plan
        and billing account). None: it cannot tell, and reconciliation compares only what it was sent."""
        return None


_registry = {}


def provider_register(provider):
    _registry[provider.name] = provider
    return provider


def provider_get(name):
    """The registered provider called `name`; a `PermanentError` if none is (a delivery for it is dead-lettered)."""
    try:
        return _registry[name]
    except KeyError:
        raise PermanentError(f"no billing provider named {name!r} is registered") from None


def providers_registered():
    return dict(_registry)
