"""Management commands: onboard_tenant, create_api_token, seed_demo."""
import io
import json

import pytest
from allauth.account.models import EmailAddress
from django.core.management import CommandError, call_command
from rest_framework.test import APIClient

from tenants.models import ApiToken, AuditLog, Membership, Tenant, User
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


def run(*args, **env):
    out = io.StringIO()
    call_command(*args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def api(token):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def test_onboard_tenant_json_prints_one_object_whose_token_works(settings):
    out = run("onboard_tenant", "--name", "Initech", "--owner-email", "Peter@Initech.test", "--plan", "pro",
              "--json")
    assert len(out.strip().splitlines()) == 1
    body = json.loads(out)
    assert set(body) == {"tenant", "user", "api_token"}
    assert body == {"tenant": "initech", "user": "peter@initech.test", "api_token": body["api_token"]}
    tenant = Tenant.objects.get(slug="initech")
    assert tenant.plan.slug == "pro" and not tenant.synthetic
    assert Membership.objects.get(tenant=tenant).role == "owner"
    assert (settings.STORAGE_ROOT / "tenants" / "initech").is_dir()
    assert AuditLog.objects.filter(tenant=tenant, action="tenant.onboarded").exists()
    response = api(body["api_token"]).get("/api/v1/tenant")
    assert response.status_code == 200 and response.json()["plan"]["slug"] == "pro"


def test_onboard_tenant_synthetic_existing_user_and_human_output():
    MembershipFactory(user__email="bob@example.test")
    out = run("onboard_tenant", "--name", "Load Test 1", "--owner-email", "bob@example.test", "--synthetic")
    assert "load-test-1" in out and "hth_" in out
    tenant = Tenant.objects.get(slug="load-test-1")
    assert tenant.synthetic and tenant.plan.slug == "free"
    assert User.objects.filter(email="bob@example.test").count() == 1
    assert Membership.objects.filter(user__email="bob@example.test").count() == 2


@pytest.mark.parametrize("args,message", [
    (["--plan", "gold"], "Unknown plan 'gold'"),
    (["--owner-email", "not-an-address"], "not an email address"),
    (["--name", "   "], "needs a name"),
    (["--slug", "taken"], "taken"),
    (["--slug", "Bad Slug!"], "not a usable tenant slug"),
])
def test_onboard_tenant_errors_are_clear_and_write_nothing(args, message):
    TenantFactory(slug="taken", name="Taken")
    before = (Tenant.objects.count(), User.objects.count(), ApiToken.objects.count(), AuditLog.objects.count())
    base = {"--name": "Initech", "--owner-email": "new@initech.test"}
    for flag, value in zip(args[::2], args[1::2], strict=True):
        base[flag] = value
    with pytest.raises(CommandError, match=message):
        run("onboard_tenant", *[x for pair in base.items() for x in pair], "--json")
    assert (Tenant.objects.count(), User.objects.count(), ApiToken.objects.count(),
            AuditLog.objects.count()) == before


def test_onboard_tenant_requires_its_arguments():
    with pytest.raises(CommandError, match="--owner-email"):
        run("onboard_tenant", "--name", "X")


def test_create_api_token():
    membership = MembershipFactory(role="admin", user__email="ada@example.test")
    out = run("create_api_token", "--tenant", membership.tenant.slug, "--email", "ADA@example.test",
              "--name", "ci", "--json")
    body = json.loads(out)
    assert body["tenant"] == membership.tenant.slug and body["user"] == "ada@example.test"
    assert body["role"] == "admin" and body["name"] == "ci"
    token = ApiToken.objects.get(prefix=body["prefix"])
    assert token.membership == membership and body["api_token"] not in token.token_hash
    assert api(body["api_token"]).get("/api/v1/tenant").json()["slug"] == membership.tenant.slug
    assert "hth_" in run("create_api_token", "--tenant", membership.tenant.slug, "--email", "ada@example.test")


def test_create_api_token_errors():
    membership = MembershipFactory()
    other = TenantFactory()
    with pytest.raises(CommandError, match="No tenant with the slug 'nope'"):
        run("create_api_token", "--tenant", "nope", "--email", membership.user.email)
    with pytest.raises(CommandError, match="is not a member of"):
        run("create_api_token", "--tenant", other.slug, "--email", membership.user.email)
    assert not ApiToken.objects.exists()


def test_seed_demo_is_idempotent_and_prints_working_credentials(settings, tmp_path, monkeypatch, client):
    monkeypatch.delenv("HEARTH_DEMO_PASSWORD", raising=False)
    settings.VAR_DIR = tmp_path
    first = json.loads(run("seed_demo", "--json"))
    second = json.loads(run("seed_demo", "--json"))
    assert first == second
    password = first["admin"]["password"]
    assert len(password) >= 12 and (tmp_path / "demo-password").stat().st_mode & 0o777 == 0o600
    staff = User.objects.get(email="admin@hearth.localhost")
    assert staff.is_staff and staff.is_superuser and staff.check_password(password)
    tenant = Tenant.objects.get(slug="demo")
    assert tenant.synthetic
    assert Membership.objects.get(tenant=tenant).user.email == "demo@hearth.localhost"
    assert Tenant.objects.count() == 1 and User.objects.count() == 2
    assert AuditLog.objects.filter(action="tenant.onboarded").count() == 1
    assert EmailAddress.objects.filter(email="demo@hearth.localhost", verified=True).exists()
    # The printed credentials log in to the admin.
    assert client.login(email="admin@hearth.localhost", password=password)
    assert client.get("/admin/").status_code == 200
    text = run("seed_demo")
    assert "admin@hearth.localhost" in text and password in text and "create_api_token" in text


def test_seed_demo_takes_the_password_from_the_environment(settings, tmp_path, monkeypatch):
    settings.VAR_DIR = tmp_path
    monkeypatch.setenv("HEARTH_DEMO_PASSWORD", "first-pass-123")
    run("seed_demo")
    monkeypatch.setenv("HEARTH_DEMO_PASSWORD", "second-pass-456")
    body = json.loads(run("seed_demo", "--json"))
    assert body["demo"]["password"] == "second-pass-456"
    assert User.objects.get(email="demo@hearth.localhost").check_password("second-pass-456")
    assert not (tmp_path / "demo-password").exists()


def test_seed_demo_leaves_a_changed_password_alone(settings, tmp_path, monkeypatch):
    monkeypatch.delenv("HEARTH_DEMO_PASSWORD", raising=False)
    settings.VAR_DIR = tmp_path
    run("seed_demo")
    owner = User.objects.get(email="demo@hearth.localhost")
    owner.set_password("my own choice 42")
    owner.save()
    body = json.loads(run("seed_demo", "--json"))
    assert "not shown" in body["demo"]["password"]
    owner.refresh_from_db()
    assert owner.check_password("my own choice 42")
