"""Billing meters and their events: identifiers unique for 24 hours, summaries per period."""
import secrets
import time
from decimal import Decimal, InvalidOperation

from localstripe.errors import UserError
from localstripe.resources import (
    List,
    StripeObject,
    store,
    try_convert_to_int,
)

from billing.stripe_emulator.resources.common import IDENTIFIER_WINDOW_SECONDS, invalid, json_number, reject_unknown


class Meter(StripeObject):
    object = "billing.meter"
    _id_prefix = "mtr_"

    def __init__(self, display_name=None, event_name=None, default_aggregation=None, customer_mapping=None,
                 value_settings=None, event_time_window=None, **kwargs):
        reject_unknown(kwargs)
        if not isinstance(display_name, str) or not display_name:
            raise invalid("Missing required param: display_name.", "display_name")
        if not isinstance(event_name, str) or not event_name or len(event_name) > 100:
            raise invalid("Missing required param: event_name.", "event_name")
        if not isinstance(default_aggregation, dict) or default_aggregation.get("formula") not in (
                "sum", "count", "last"):
            raise invalid("default_aggregation[formula] must be sum, count or last.", "default_aggregation[formula]")
        customer_mapping = customer_mapping or {"event_payload_key": "stripe_customer_id", "type": "by_id"}
        value_settings = value_settings or {"event_payload_key": "value"}
        for key, value in list(store.items()):
            if key.startswith("billing.meter:") and value.event_name == event_name and value.status == "active":
                raise invalid(f"An active meter with event_name `{event_name}` already exists.", "event_name")
        super().__init__()
        self.display_name = display_name
        self.event_name = event_name
        self.default_aggregation = {"formula": default_aggregation["formula"]}
        self.customer_mapping = {"event_payload_key": customer_mapping.get("event_payload_key", "stripe_customer_id"),
                                 "type": "by_id"}
        self.value_settings = {"event_payload_key": value_settings.get("event_payload_key", "value")}
        self.event_time_window = event_time_window
        self.status = "active"
        self.status_transitions = {"deactivated_at": None}
        self.updated = self.created

    def _update(self, display_name=None, **kwargs):
        reject_unknown(kwargs)
        if display_name:
            self.display_name = display_name
            self.updated = int(time.time())

    @classmethod
    def _api_delete(cls, id):
        raise UserError(405, "Meters are deactivated, not deleted")

    @classmethod
    def _api_deactivate(cls, id, **kwargs):
        meter = cls._api_retrieve(id)
        meter.status = "inactive"
        meter.status_transitions["deactivated_at"] = meter.updated = int(time.time())
        return meter

    @classmethod
    def _api_reactivate(cls, id, **kwargs):
        meter = cls._api_retrieve(id)
        meter.status = "active"
        meter.updated = int(time.time())
        return meter

    @classmethod
    def _api_list_all(cls, url, status=None, limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        listing = super()._api_list_all(url, limit=limit, starting_after=starting_after)
        if status is not None:
            listing._list = [m for m in listing._list if m.status == status]
        return listing

    def _events(self, customer, start, end):
        key = self.customer_mapping["event_payload_key"]
        return sorted((e for k, e in store.items()
                       if k.startswith("billing.meter_event:") and e.event_name == self.event_name
                       and e.payload.get(key) == customer and start <= e.timestamp < end),
                      key=lambda e: (e.timestamp, e.created))

    def _aggregate(self, customer, start, end):
        events = self._events(customer, start, end)
        values = [Decimal(e.payload.get(self.value_settings["event_payload_key"], "0")) for e in events]
        formula = self.default_aggregation["formula"]
        if formula == "count":
            total = Decimal(len(events))
        elif formula == "last":
            total = values[-1] if values else Decimal(0)
        else:
            total = sum(values, Decimal(0))
        return total  # exact: decimal values (hours to the millionth) add up without float error

    @classmethod
    def _api_event_summaries(cls, id, customer=None, start_time=None, end_time=None, value_grouping_window=None,
                             limit=None, starting_after=None, **kwargs):
        reject_unknown(kwargs)
        meter = cls._api_retrieve(id)
        if not isinstance(customer, str) or not customer:
            raise invalid("Missing required param: customer.", "customer")
        start, end = try_convert_to_int(start_time), try_convert_to_int(end_time)
        for name, value in (("start_time", start), ("end_time", end)):
            if not isinstance(value, int):
                raise invalid(f"Missing required param: {name}.", name)
            if value % 60:
                raise invalid(f"{name} must be aligned with minute boundaries.", name)
        if end <= start:
            raise invalid("end_time must be after start_time.", "end_time")
        step = {None: end - start, "hour": 3600, "day": 86400}.get(value_grouping_window)
        if step is None:
            raise invalid("value_grouping_window must be hour or day.", "value_grouping_window")
        listing = List(f"/v1/billing/meters/{id}/event_summaries", limit=limit, starting_after=starting_after)
        window = start
        while window < end:
            listing._list.append(MeterEventSummary(meter, customer, window, min(window + step, end)))
            window += step
        return listing


class MeterEventSummary:
    """Computed on request, never stored (Stripe aggregates events into summaries itself)."""

    object = "billing.meter_event_summary"

    def __init__(self, meter, customer, start, end):
        self.id = f"mtrusg_{meter.id}_{customer}_{start}_{end}"
        self.meter = meter.id
        self.start_time = start
        self.end_time = end
        self.aggregated_value = meter._aggregate(customer, start, end)

    def _export(self, expand=None):
        return {"id": self.id, "object": self.object, "aggregated_value": json_number(self.aggregated_value),
                "start_time": self.start_time, "end_time": self.end_time, "meter": self.meter, "livemode": False}


class MeterEvent:
    """A usage fact, stored under its identifier so a repeat within 24 hours is refused as Stripe refuses it."""

    object = "billing.meter_event"

    def __init__(self, event_name=None, payload=None, identifier=None, timestamp=None, **kwargs):
        reject_unknown(kwargs)
        now = int(time.time())
        if not isinstance(event_name, str) or not event_name or len(event_name) > 100:
            raise invalid("Missing required param: event_name.", "event_name")
        if not isinstance(payload, dict) or not payload:
            raise invalid("Missing required param: payload.", "payload")
        if identifier is None:
            identifier = secrets.token_hex(16)
        if not isinstance(identifier, str) or not identifier or len(identifier) > 100:
            raise invalid("Invalid string: identifier", "identifier")
        timestamp = now if timestamp is None else try_convert_to_int(timestamp)
        if not isinstance(timestamp, int) or timestamp < now - 35 * 86400 or timestamp > now + 300:
            raise invalid("The timestamp must be within the past 35 calendar days or up to 5 minutes in the future.",
                          "timestamp")
        for meter in self._meters(event_name):
            value = payload.get(meter.value_settings["event_payload_key"])
            try:
                finite = Decimal(str(value)).is_finite()
            except InvalidOperation:
                finite = False
            if not finite:
                raise invalid(f"payload[{meter.value_settings['event_payload_key']}] must be a number.",
                              f"payload[{meter.value_settings['event_payload_key']}]")
            if not payload.get(meter.customer_mapping["event_payload_key"]):
                raise invalid(f"Missing required param: payload[{meter.customer_mapping['event_payload_key']}].",
                              f"payload[{meter.customer_mapping['event_payload_key']}]")
        seen = store.get("billing.meter_event:" + identifier)
        if seen is not None and seen.created > now - IDENTIFIER_WINDOW_SECONDS:
            raise invalid(f"An event already exists with identifier {identifier}.", "identifier",
                          code="duplicate_meter_event")
        self.created = now
        self.event_name = event_name
        self.identifier = identifier
        self.payload = {key: str(value) for key, value in payload.items()}
        self.timestamp = timestamp
        store["billing.meter_event:" + identifier] = self

    @staticmethod
    def _meters(event_name):
        return [m for k, m in store.items()
                if k.startswith("billing.meter:") and m.event_name == event_name and m.status == "active"]

    @classmethod
    def _api_create(cls, **data):
        return cls(**data)

    def _export(self, expand=None):
        return {"object": self.object, "created": self.created, "event_name": self.event_name,
                "identifier": self.identifier, "livemode": False, "payload": dict(self.payload),
                "timestamp": self.timestamp}
