"""Screenshots of Hearth's own single sign-on forms for docs/SSO_PROVIDERS.md, taken with headless Chromium.

    .venv/bin/python scripts/sso_screenshots.py [--database-url postgres://postgres@127.0.0.1:5432/hearth_docs]

Runs Hearth in this process (a WSGI server on a free loopback port) against a database of its own (created and
migrated on the first run: about a minute), fills it with one example tenant (Acme, Enterprise) and its identity
providers, and saves PNGs under docs/img/ (each kept under 100 KB). GitHub and Google sign-in are switched on with
placeholder credentials so the sign-in page shows their buttons; nothing leaves the machine.
"""
import argparse
import os
import socket
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
OUT = ROOT / "docs" / "img"
BASE_URL = "https://hearth.example.com"  # what the pages show as Hearth's address (the redirect URI)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
MAX_BYTES = 100_000


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def database_ensure(url):
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(url.rsplit("/", 1)[0] + "/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def seed():
    """Acme on Enterprise, its owner, an Okta-like OIDC provider (one domain verified, one waiting for its TXT
    record) and a SAML provider's form. Idempotent."""
    from sso import services as sso
    from sso.models import IdentityProvider
    from tenants.models import Membership, Plan, Tenant, User

    tenant, _ = Tenant.objects.update_or_create(slug="acme-docs", defaults=dict(
        name="Acme", plan=Plan.objects.get(slug="enterprise"), synthetic=True))
    owner = User.objects.filter(email="owner@acme.example").first() or User.objects.create_user(
        email="owner@acme.example", password=None)
    Membership.objects.get_or_create(tenant=tenant, user=owner, defaults=dict(role="owner"))
    IdentityProvider.objects.filter(tenant=tenant).delete()
    provider = sso.identity_provider_create(
        tenant=tenant, actor=owner, kind="oidc", issuer="https://acme.okta.com/oauth2/default",
        client_id="0oa8x2hearthdocs4x7", client_secret="placeholder-secret", scopes="openid email profile groups",
        domains=["acme.example", "acme-corp.example"], default_role="member",
        group_roles={"hearth-admins": "admin"}, enforce_sso=False)
    sso.domain_verify_by_staff(domain="acme.example", actor="docs", identity_provider=provider)
    return owner, provider


def shoot(page, url, name, *, selector="main", nth=0):
    if page.url != url:
        page.goto(url)
    element = page.locator(selector).nth(nth)
    element.wait_for()
    path = OUT / name
    element.screenshot(path=str(path), animations="disabled")
    size = path.stat().st_size
    print(f"{path.relative_to(ROOT)}  {size / 1000:.0f} KB")
    if size > MAX_BYTES:
        raise SystemExit(f"{name} is {size} bytes, over {MAX_BYTES}: narrow the viewport or the element")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/hearth_docs")
    args = parser.parse_args()
    database_ensure(args.database_url)
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings.base", DATABASE_URL=args.database_url, HEARTH_BASE_URL=BASE_URL,
        HEARTH_INSTANCE=os.environ.get("HEARTH_INSTANCE", "hearth") + "-docs", LOG_LEVEL="WARNING",
        SOCIAL_GITHUB_CLIENT_ID="placeholder", SOCIAL_GITHUB_CLIENT_SECRET="placeholder",
        SOCIAL_GOOGLE_CLIENT_ID="placeholder", SOCIAL_GOOGLE_CLIENT_SECRET="placeholder",
        # Playwright's sync API runs an event loop in this thread; the ORM calls between its steps stay synchronous.
        DJANGO_ALLOW_ASYNC_UNSAFE="true")
    import django

    django.setup()
    from django.conf import settings
    from django.contrib.staticfiles.handlers import StaticFilesHandler
    from django.core.management import call_command
    from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
    from django.core.wsgi import get_wsgi_application
    from django.db import connection
    from django.db.migrations.executor import MigrationExecutor
    from django.test import Client
    from playwright.sync_api import sync_playwright

    executor = MigrationExecutor(connection)
    if executor.migration_plan(executor.loader.graph.leaf_nodes()):
        print("migrating the docs database (first run: about a minute)…", file=sys.stderr)
        call_command("migrate", verbosity=0)
    owner, provider = seed()

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, *args):
            pass

    port = free_port()
    server = ThreadedWSGIServer(("127.0.0.1", port), QuietHandler, allow_reuse_address=True)
    server.set_app(StaticFilesHandler(get_wsgi_application()))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    site = f"http://localhost:{port}"

    # The owner's session, made as a sign-in would make it (the sign-in itself is not what is shown).
    client = Client(HTTP_HOST=f"localhost:{port}")
    client.force_login(owner, backend="django.contrib.auth.backends.ModelBackend")
    session_cookie = {"name": settings.SESSION_COOKIE_NAME, "value": client.cookies[settings.SESSION_COOKIE_NAME].value,
                      "domain": "localhost", "path": "/"}

    OUT.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
            anonymous = browser.new_context(viewport={"width": 840, "height": 900}, device_scale_factor=1)
            shoot(anonymous.new_page(), f"{site}/accounts/login/", "login-social.png", selector="main")
            context = browser.new_context(viewport={"width": 840, "height": 900}, device_scale_factor=1)
            context.add_cookies([session_cookie])
            page = context.new_page()
            shoot(page, f"{site}/sso/settings/", "sso-settings.png", selector="main section.card")
            # The edit form in two parts: the IdP's values, then domains and roles (each image stays small).
            shoot(page, f"{site}/sso/settings/{provider.pk}/", "sso-oidc-form.png", selector="main fieldset")
            shoot(page, f"{site}/sso/settings/{provider.pk}/", "sso-domains-roles.png", selector="main fieldset",
                  nth=1)
            shoot(page, f"{site}/sso/settings/new/saml/", "sso-saml-form.png", selector="main fieldset")
            browser.close()
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
