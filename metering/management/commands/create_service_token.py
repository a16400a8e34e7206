"""Create a service token for one of the platform's services; the token is printed once."""
import json

from django.core.management.base import BaseCommand

from metering.tokens import service_token_create


class Command(BaseCommand):
    help = "Create a service token (for POST /api/v1/usage/events). Prints it once."

    def add_arguments(self, parser):
        parser.add_argument("--name", required=True, help="Which service uses it, e.g. ai-builder-gateway.")
        parser.add_argument("--json", action="store_true", help='Print {"token": ...} only.')

    def handle(self, *args, name, **options):
        token, plaintext = service_token_create(name=name, actor="manage.py create_service_token")
        if options["json"]:
            self.stdout.write(json.dumps({"token": plaintext, "name": token.name, "prefix": token.prefix}))
        else:
            self.stdout.write(f"Service token '{token.name}' ({token.prefix}…): {plaintext}")
            self.stdout.write("It is shown once; store it in the service's secret store.")
