"""Errors raised by services; the API and the portal turn each into a clear 4xx message."""


class ServiceError(Exception):
    """A request that cannot be carried out as asked. Nothing was written."""

    status_code = 400
    code = "invalid"
    # Seconds after which the same request may succeed (a Retry-After header on a 503); None: no header.
    retry_after = None

    def __init__(self, message, *, code=None, field=None, extra=None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.field = field
        self.extra = extra or {}


class NotFound(ServiceError):
    """Does not exist, or is not yours: the two look the same."""

    status_code = 404
    code = "not_found"


class Forbidden(ServiceError):
    status_code = 403
    code = "forbidden"


class Conflict(ServiceError):
    status_code = 409
    code = "conflict"


class PaymentRequired(ServiceError):
    """The tenant's subscription is unpaid past its grace period: pay (Billing page) and it works again."""

    status_code = 402
    code = "payment_required"


class Unavailable(ServiceError):
    """A service Hearth depends on (Stripe) did not answer; nothing was changed, try again later."""

    status_code = 503
    code = "unavailable"
