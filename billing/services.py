"""Billing's public write interface: its service functions, re-exported from the module that owns each concern.

`outbox` (billing events and their deliveries), `reporting` (what enters the queue from the roll-ups),
`invoices` (Hearth's own numbered invoices).
"""
from billing.invoices import invoice_issue, invoice_line_add, invoices_issue
from billing.outbox import billing_event_record, deliveries_drain, deliveries_retry
from billing.reporting import usage_report, usage_report_tenant

__all__ = [
    "billing_event_record", "deliveries_drain", "deliveries_retry", "invoice_issue", "invoice_line_add",
    "invoices_issue", "usage_report", "usage_report_tenant",
]
