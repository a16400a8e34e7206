"""Billing: dj-stripe, the billing-event outbox and its providers, reconciliation."""
