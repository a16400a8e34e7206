"""Create a service token for one of the platform's services, scoped to its meters (and tenants); printed once."""
import json

from django.core.management.base import BaseCommand, CommandError

from metering.tokens import service_token_create
from tenants.exceptions import ServiceError


class Command(BaseCommand):
    help = ("Create a service token (for POST /api/v1/usage/events) that writes only the given meters, for the "
            "given tenants or every tenant. Prints it once.")

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Which service uses it, e.g. ai-builder-gateway.")
        parser.add_argument("--meters", default="",
                            help="Comma-separated meter slugs it may write, e.g. ai_builder_tokens. Without it the "
                                 "token writes nothing until staff scope it in admin. Never a platform meter.")
        parser.add_argument("--tenants", default="",
                            help="Comma-separated tenant slugs it may write for. Without it: every tenant.")
        parser.add_argument("--json", action="store_true", help='Print {"token", "name", "prefix", "meters", '
                                                                '"tenants"} only.')

    def handle(self, *args, name, meters, tenants, **options):
        try:
            token, plaintext = service_token_create(name=name, meters=meters, tenants=tenants,
                                                    actor="manage.py create_service_token")
        except ServiceError as exc:
            raise CommandError(exc.message) from exc
        if options["json"]:
            self.stdout.write(json.dumps({"token": plaintext, "name": token.name, "prefix": token.prefix,
                                          "meters": token.meters, "tenants": token.tenant_slugs}))
            return
        self.stdout.write(f"Service token '{token.name}' ({token.prefix}…): {plaintext}")
        self.stdout.write(f"Meters: {', '.join(token.meters) or 'none (it writes nothing until scoped in admin)'}; "
                          f"tenants: {', '.join(token.tenant_slugs) or 'every tenant'}.")
        self.stdout.write("It is shown once; store it in the service's secret store.")
