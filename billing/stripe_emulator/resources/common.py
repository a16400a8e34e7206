"""What every emulated resource shares: Stripe's error shape, events sent to the webhooks, periods and money,
and the expansion fix every localstripe object gets."""
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from dateutil.relativedelta import relativedelta
from localstripe.errors import UserError
from localstripe.resources import (
    Event,
    StripeObject,
)
from localstripe.webhooks import _webhooks, schedule_webhook

# The API version the pinned stripe SDK (15.6.2) sends; events carry it as Stripe's do.
API_VERSION = "2026-08-26.dahlia"
IDENTIFIER_WINDOW_SECONDS = 24 * 3600
INTERVALS = {"day": relativedelta(days=1), "week": relativedelta(weeks=1),
             "month": relativedelta(months=1), "year": relativedelta(years=1)}


def _expandable(obj, path):
    """Whether `path` names something `obj` has: Stripe ignores an expansion of a field that is absent or null
    (dj-stripe asks for `discounts`, `currency_options`, … on every retrieve), where localstripe answers 400."""
    if isinstance(obj, list):
        return all(_expandable(item, path) for item in obj)
    key, _, rest = path.partition(".")
    if not isinstance(obj, dict) or obj.get(key) is None:
        return False
    return not rest or isinstance(obj[key], str) or _expandable(obj[key], rest)


_localstripe_export = StripeObject._export


def _export(self, expand=None):
    if expand and isinstance(expand, list) and all(isinstance(path, str) for path in expand):
        plain = _localstripe_export(self)
        expand = [path for path in expand if _expandable(plain, path)]
    return _localstripe_export(self, expand=expand)


StripeObject._export = _export


def invalid(message, param=None, code=None):
    """Stripe's shape for a 400: an invalid_request_error naming the parameter."""
    contents = {}
    if param:
        contents["param"] = param
    if code:
        contents["code"] = code
    return UserError(400, message, contents)


def reject_unknown(kwargs):
    if kwargs:
        name = sorted(kwargs)[0]
        raise invalid(f"Received unknown parameter: {name} (or the offline Stripe does not emulate it)", param=name)


def emit(event_type, obj, previous_attributes=None):
    """Record an event and send it, signed, to every webhook endpoint that wants it."""
    event = Event(event_type, obj)
    event.api_version = API_VERSION
    event.pending_webhooks = len(_webhooks)
    event.request = {"id": None, "idempotency_key": None}
    if previous_attributes:
        event.data["previous_attributes"] = previous_attributes
    schedule_webhook(event)
    return event


def period_end_after(start, interval, interval_count=1):
    moment = datetime.fromtimestamp(start, UTC)
    for _ in range(interval_count):
        moment += INTERVALS[interval]
    return int(moment.timestamp())


def money(amount):
    """Minor units from a Decimal, rounded as Stripe rounds prorations (half up)."""
    return int(Decimal(amount).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def json_number(value):
    """A Decimal as Stripe writes the number in JSON: an integer when whole."""
    return int(value) if value == value.to_integral_value() else float(value)


class Exported:
    """A response body made once, for a field Stripe shows only at creation (a webhook endpoint's secret)."""

    def __init__(self, body):
        self.body = body

    def _export(self, expand=None):
        return self.body
