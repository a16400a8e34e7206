"""Billing's public write interface: its service functions, re-exported from the module that owns each concern.

`outbox` (billing events and their deliveries), `reporting` (what enters the queue from the roll-ups),
`invoices` (Hearth's own numbered invoices), `reconciliation` (gaps between metered, reported and billed),
`subscriptions` (the end of a past-due grace period), `costs` (the cost model's unit prices).
"""
from billing.costs import cost_rates_update
from billing.invoices import invoice_issue, invoice_line_add, invoices_issue
from billing.outbox import billing_event_record, deliveries_drain, deliveries_retry
from billing.reconciliation import reconciliation_gap_resend, reconciliation_nightly, reconciliation_run
from billing.reporting import usage_report, usage_report_tenant
from billing.subscriptions import payment_grace_expire, tenant_payment_suspend

__all__ = [
    "billing_event_record", "cost_rates_update", "deliveries_drain", "deliveries_retry", "invoice_issue",
    "invoice_line_add", "invoices_issue", "payment_grace_expire", "reconciliation_gap_resend",
    "reconciliation_nightly", "reconciliation_run", "tenant_payment_suspend", "usage_report", "usage_report_tenant",
]
