"""`manage.py create_api_token`: a personal API token for one member of one tenant."""
import json

from django.core.management.base import BaseCommand, CommandError

from tenants import services
from tenants.models import Membership, Tenant


class Command(BaseCommand):
    help = "Create a personal API token for a member of a tenant and print it (once)."

    def add_arguments(self, parser):
        parser.add_argument("--tenant", required=True, help="Tenant slug.")
        parser.add_argument("--email", required=True, help="The member's address.")
        parser.add_argument("--name", default="command line", help="A label to tell tokens apart.")
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        tenant = Tenant.objects.exclude(status=Tenant.Status.OFFBOARDED).filter(slug=options["tenant"]).first()
        if tenant is None:
            raise CommandError(f"No tenant with the slug '{options['tenant']}'.")
        membership = (Membership.objects.select_related("user", "tenant")
                      .filter(tenant=tenant, user__email__iexact=options["email"].strip()).first())
        if membership is None:
            raise CommandError(f"{options['email']} is not a member of {tenant.slug}.")
        token, plaintext = services.api_token_create(membership=membership, name=options["name"],
                                                     actor=membership.user)
        if options["json"]:
            self.stdout.write(json.dumps({"tenant": tenant.slug, "user": membership.user.email, "role": membership.role,
                                          "name": token.name, "prefix": token.prefix, "api_token": plaintext}))
        else:
            self.stdout.write(f"API token for {membership.user.email} in {tenant.slug} ({membership.role}), "
                              f"shown once:\n{plaintext}")
