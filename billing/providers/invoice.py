"""The invoice provider: each billing event becomes a line of the tenant's draft invoice for its month."""
from django.db import connection

from billing.invoices import invoice_line_add
from billing.providers import BillingProvider, PermanentError


class InvoiceProvider(BillingProvider):
    name = "invoice"
    writes_database = True

    def deliver(self, event, *, idempotency_key):
        if event.tenant is None:
            raise PermanentError(f"tenant {event.tenant_slug} is gone; its invoice cannot be drafted")
        line = invoice_line_add(event=event)
        return f"invoice:{line.invoice_id}:line:{line.pk}"

    def billed_usage(self, *, period_start, tenants):
        """The usage lines on the tenants' invoices of the month, drafts included (a draft is issued as it is)."""
        with connection.cursor() as cursor:
            cursor.execute(_BILLED_SQL, [period_start, [tenant.pk for tenant in tenants]])
            return {(tenant_id, meter): (quantity, amount) for tenant_id, meter, quantity, amount in cursor}


_BILLED_SQL = """
SELECT e.tenant_id, m.slug, SUM(l.quantity)::bigint, SUM(l.amount_cents)::bigint
  FROM billing_invoiceline l
  JOIN billing_billingevent e ON e.id = l.event_id
  JOIN metering_meter m ON m.id = e.meter_id
 WHERE e.kind = 'usage' AND e.period_start = %s AND e.tenant_id = ANY(%s)
 GROUP BY e.tenant_id, m.slug
"""
