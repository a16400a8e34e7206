"""Metering: usage events, roll-ups, quotas and entitlements."""
