"""The invoice provider: each billing event becomes a line of the tenant's draft invoice for its month."""
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
