"""`manage.py onboard_tenant`: a tenant, its owner and the owner's first API token, in one step."""
import json

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from tenants import services
from tenants.exceptions import ServiceError


class Command(BaseCommand):
    help = "Create a tenant with an owner (created if new) and print the owner's first API token."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Display name of the tenant.")
        parser.add_argument("--owner-email", required=True, help="The owner's address; the user is created if new.")
        parser.add_argument("--plan", default="free", help="Plan slug (default: free).")
        parser.add_argument("--slug", default=None, help="Tenant slug (default: derived from the name).")
        parser.add_argument("--synthetic", action="store_true", help="Load tests and demos: not revenue.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object: tenant, user, api_token.")

    def handle(self, *args, **options):
        try:
            # One transaction: an unknown plan or a taken slug leaves no user, tenant or token behind.
            with transaction.atomic():
                owner = services.user_get_or_create(email=options["owner_email"])
                tenant = services.tenant_onboard(name=options["name"], owner=owner, plan=options["plan"],
                                                 slug=options["slug"], synthetic=options["synthetic"])
                membership = tenant.memberships.get(user=owner)
                _, token = services.api_token_create(membership=membership, name="onboarding", actor=owner)
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        if options["json"]:
            self.stdout.write(json.dumps({"tenant": tenant.slug, "user": owner.email, "api_token": token}))
            return
        self.stdout.write(self.style.SUCCESS(f"Tenant {tenant.slug} ({tenant.name}) on {tenant.plan.name}"))
        self.stdout.write(f"  owner      {owner.email}" + ("" if owner.has_usable_password() else
                                                            " (no password yet: use 'Forgot password')"))
        self.stdout.write(f"  API token  {token}   (shown once)")
