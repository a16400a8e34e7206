"""`python manage.py billing_stripe_setup`: Hearth's webhook endpoint, and with the offline Stripe its registration
there and the plans' prices (make run calls it each time the emulator starts)."""
import time
import urllib.error
import urllib.request

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from billing.webhooks import emulator_webhook_register, webhook_endpoint_ensure


class Command(BaseCommand):
    help = ("Record Hearth's Stripe webhook endpoint and print its URL. With the offline Stripe (no "
            "STRIPE_SECRET_KEY), wait for it, register the endpoint there with STRIPE_WEBHOOK_SECRET and sync the "
            "plans' prices.")

    def add_arguments(self, parser):
        parser.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the offline Stripe")
        parser.add_argument("--base-url", default=None, help="Hearth's address as Stripe reaches it")

    def handle(self, *args, wait, base_url, **options):
        endpoint = webhook_endpoint_ensure(base_url=base_url)
        if not settings.STRIPE_OFFLINE:
            self.stdout.write(f"Stripe must post webhooks to {endpoint.url} (Dashboard → Developers → Webhooks), "
                              f"signed with STRIPE_WEBHOOK_SECRET.")
            return
        self._wait_for_emulator(wait)
        emulator_webhook_register(endpoint=endpoint)
        self.stdout.write(f"the offline Stripe at {settings.STRIPE_API_HOST} posts webhooks to {endpoint.url}")
        call_command("billing_sync_plans", stdout=self.stdout)

    def _wait_for_emulator(self, wait):
        deadline = time.monotonic() + wait
        request = urllib.request.Request(f"{settings.STRIPE_API_HOST.rstrip('/')}/v1/account",
                                         headers={"Authorization": f"Bearer {settings.STRIPE_SECRET_KEY}"})
        while True:
            try:
                with urllib.request.urlopen(request, timeout=2):
                    return
            except (urllib.error.URLError, OSError) as exc:
                if time.monotonic() > deadline:
                    raise CommandError(f"the offline Stripe at {settings.STRIPE_API_HOST} does not answer: {exc}")
                time.sleep(0.3)
