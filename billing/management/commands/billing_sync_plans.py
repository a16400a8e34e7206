"""`python manage.py billing_sync_plans`: create or update the Stripe products and prices of the public paid plans."""
from django.core.management.base import BaseCommand

from billing.catalogue import catalogue_sync


class Command(BaseCommand):
    help = ("Create or update, in Stripe, the product and monthly price of each public paid plan (lookup key = the "
            "plan's slug) and its metered overage price on the workspace_hours meter. Idempotent.")

    def handle(self, *args, **options):
        report = catalogue_sync()
        for line in report.lines:
            self.stdout.write(line)
        self.stdout.write(f"{report.created} created, {report.updated} updated")
