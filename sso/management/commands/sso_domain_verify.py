"""`manage.py sso_domain_verify DOMAIN [--identity-provider ID]`: staff vouch for a domain without DNS."""
from django.core.management.base import BaseCommand, CommandError

from sso import services
from sso.models import IdentityProvider
from tenants.exceptions import ServiceError


class Command(BaseCommand):
    help = "Mark an email domain of an identity provider as verified (sign-ins from it then route to that provider)."

    def add_arguments(self, parser):
        parser.add_argument("domain")
        parser.add_argument("--identity-provider", type=int, help="Which claim, when several tenants list it.")

    def handle(self, domain, identity_provider=None, **options):
        provider = None
        if identity_provider is not None:
            provider = IdentityProvider.objects.filter(pk=identity_provider).first()
            if provider is None:
                raise CommandError(f"No identity provider {identity_provider}.")
        try:
            row = services.domain_verify_by_staff(domain=domain, actor="manage.py sso_domain_verify",
                                                  identity_provider=provider)
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        tenant = row.identity_provider.tenant
        self.stdout.write(f"{row.domain} is verified for {tenant.slug} (identity provider {row.identity_provider_id}).")
