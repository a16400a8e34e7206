"""`python manage.py reconcile_billing [--period YYYY-MM] [--json]`: reconcile a billing month and list its gaps."""
import json

from django.core.management.base import BaseCommand, CommandError

from billing.reconciliation import period_parse, reconciliation_run
from tenants.exceptions import ServiceError


def _money(cents):
    return f"{cents // 100}.{cents % 100:02d}"


class Command(BaseCommand):
    help = ("Compare, per tenant and meter, what metering counted, what each billing provider was sent and what it "
            "billed in a billing month (default: the previous one); store the gaps for admin and print them.")

    def add_arguments(self, parser):
        parser.add_argument("--period", help="the billing month, YYYY-MM (UTC); default: the previous month")
        parser.add_argument("--json", action="store_true", dest="as_json", help="print the report as one JSON object")

    def handle(self, *args, period=None, as_json=False, **options):
        try:
            period_start = period_parse(period) if period is not None else None
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        report = reconciliation_run(period_start=period_start)
        if as_json:
            self.stdout.write(json.dumps(report))
        else:
            self._human(report)
        for name in report["unchecked"]:
            self.stderr.write(f"{name} could not tell what it billed: its 'billed' column was not compared.")

    def _human(self, report):
        self.stdout.write(f"Billing month {report['period']}: {report['tenants']} tenants compared, "
                          f"{len(report['gaps'])} gaps.")
        for gap in report["gaps"]:
            self.stdout.write(f"  {gap['tenant']}  {gap['meter']}  {gap['provider']}  {gap['kind']}  "
                              f"{gap['quantity']}  {_money(gap['amount_cents'])}")
        self.stdout.write(f"Revenue at risk: {_money(report['revenue_at_risk_cents'])} "
                          f"({report['revenue_at_risk_cents']} cents).")

