"""`manage.py seed_demo`: a staff user and a demo tenant to look around with; safe to run at every start."""
import json
import os
import secrets
from pathlib import Path

from allauth.account.models import EmailAddress
from django.conf import settings
from django.core.management.base import BaseCommand
from django.db import transaction

from tenants import services
from tenants.models import Membership, Role, Tenant, User

STAFF_EMAIL = "admin@hearth.localhost"
OWNER_EMAIL = "demo@hearth.localhost"
TENANT_SLUG = "demo"


class Command(BaseCommand):
    help = (f"Create (once) the staff user {STAFF_EMAIL} and the demo tenant '{TENANT_SLUG}' owned by "
            f"{OWNER_EMAIL}, and print their credentials. The password comes from HEARTH_DEMO_PASSWORD, "
            "else it is generated once and kept in var/demo-password.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true", help="Print one JSON object.")

    def handle(self, *args, **options):
        password, source = self._password()
        with transaction.atomic():
            staff, staff_pw = self._user(STAFF_EMAIL, password, source, staff=True)
            owner, owner_pw = self._user(OWNER_EMAIL, password, source, staff=False)
            tenant = Tenant.objects.filter(slug=TENANT_SLUG).first()
            if tenant is None:
                tenant = services.tenant_onboard(name="Demo", slug=TENANT_SLUG, owner=owner, plan="team",
                                                 synthetic=True, actor="seed_demo")
            elif not Membership.objects.filter(tenant=tenant, user=owner).exists():
                Membership.objects.create(tenant=tenant, user=owner, role=Role.OWNER)
        base = settings.HEARTH_BASE_URL.rstrip("/")
        if options["json"]:
            self.stdout.write(json.dumps({
                "admin": {"email": staff.email, "password": staff_pw, "url": f"{base}/admin/"},
                "demo": {"email": owner.email, "password": owner_pw, "tenant": tenant.slug, "url": f"{base}/"},
            }))
            return
        self.stdout.write(f"admin   {base}/admin/   {staff.email} / {staff_pw}")
        self.stdout.write(f"portal  {base}/   {owner.email} / {owner_pw}   (tenant '{tenant.slug}')")
        self.stdout.write(f"API     manage.py create_api_token --tenant {tenant.slug} --email {owner.email}")

    def _password(self):
        if os.environ.get("HEARTH_DEMO_PASSWORD"):
            return os.environ["HEARTH_DEMO_PASSWORD"], "env"
        path = Path(settings.VAR_DIR) / "demo-password"
        if path.exists():
            return path.read_text().strip(), "file"
        path.parent.mkdir(parents=True, exist_ok=True)
        password = secrets.token_urlsafe(12)
        path.touch(mode=0o600)
        path.write_text(password + "\n")
        return password, "generated"

    def _user(self, email, password, source, *, staff):
        """The user with the demo password; a password changed since (and not set by env) is left alone."""
        user = User.objects.filter(email__iexact=email).first()
        if user is None:
            user = User.objects.create_superuser(email, password) if staff else User.objects.create_user(
                email, password)
        elif not user.check_password(password):
            if source != "env":
                return user, "(changed since; not shown)"
            user.set_password(password)
            user.save(update_fields=["password"])
        if staff and not (user.is_staff and user.is_superuser):
            user.is_staff = user.is_superuser = True
            user.save(update_fields=["is_staff", "is_superuser"])
        # allauth requires a verified address to log in.
        EmailAddress.objects.update_or_create(user=user, email=email, defaults={"verified": True, "primary": True})
        return user, password
