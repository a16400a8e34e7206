"""A domain routes sign-ins only once verified: by its DNS TXT record (read from a real DNS server on loopback), or
by staff (admin, `manage.py sso_domain_verify`). A domain belongs to one tenant only."""
import pytest
from django.core.management import CommandError, call_command

from sso import services
from sso.models import SsoDomain
from sso.selectors import identity_provider_for_email
from tenants.exceptions import Conflict
from tenants.models import Plan
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


def make_provider(tenant, domains=("acme.test",)):
    owner = tenant.memberships.filter(role="owner").first().user
    return services.identity_provider_create(tenant=tenant, actor=owner, issuer="https://idp.test", client_id="c",
                                             client_secret="s", domains=list(domains))


def other_tenant(name):
    tenant = TenantFactory(name=name, plan=Plan.objects.get(slug="enterprise"))
    MembershipFactory(tenant=tenant, role="owner")
    return tenant


def test_the_txt_record_verifies_the_domain(acme, dns_server):
    tenant, owner, *_ = acme
    provider = make_provider(tenant, domains=("acme.test", "nowhere.test"))
    row = provider.domains.get(domain="acme.test")
    dns_server.records["acme.test"] = ["v=spf1 -all", "hearth-verification=someone-elses-token"]
    api = api_client_for(owner)
    response = api.post(f"/api/v1/identity-providers/{provider.pk}/domains/verify")
    assert response.status_code == 200
    assert not any(d["verified"] for d in response.json()["domain_verification"])
    assert identity_provider_for_email("ada@acme.test") is None

    dns_server.records["acme.test"].append(row.txt_record)
    body = api.post(f"/api/v1/identity-providers/{provider.pk}/domains/verify").json()
    assert {d["domain"]: d["verified"] for d in body["domain_verification"]} == {"acme.test": True,
                                                                                 "nowhere.test": False}
    assert "acme.test" in dns_server.queries and "nowhere.test" in dns_server.queries
    row.refresh_from_db()
    assert row.verified_by == "dns"
    assert identity_provider_for_email("Ada@ACME.test") == provider
    assert identity_provider_for_email("ada@sub.acme.test") is None


def test_a_dns_server_that_does_not_answer_is_a_503(acme, settings):
    tenant, owner, *_ = acme
    provider = make_provider(tenant)
    settings.SSO_DNS_NAMESERVERS, settings.SSO_DNS_TIMEOUT = ["127.0.0.1:9"], 0.5
    response = api_client_for(owner).post(f"/api/v1/identity-providers/{provider.pk}/domains/verify")
    assert response.status_code == 503 and response.json()["code"] == "dns_unavailable"


def test_a_domain_belongs_to_one_tenant_only(acme, dns_server):
    tenant, *_ = acme
    mine = make_provider(tenant, domains=("Acme.Test",))
    squatter = make_provider(other_tenant("Squatter"), domains=("acme.test",))  # may claim it, cannot verify it
    services.domain_verify_by_staff(domain="acme.test", actor="test", identity_provider=mine)
    row = squatter.domains.get()
    dns_server.records["acme.test"] = [row.txt_record]  # even with the record published
    with pytest.raises(Conflict, match="belongs to one tenant only"):
        services.domains_verify_dns(identity_provider=squatter,
                                    actor=squatter.tenant.memberships.get(role="owner").user)
    assert SsoDomain.objects.filter(verified_at__isnull=False).get().identity_provider == mine
    assert identity_provider_for_email("ada@acme.test") == mine


def test_the_command_verifies_a_domain(acme, capsys):
    tenant, *_ = acme
    provider = make_provider(tenant)
    call_command("sso_domain_verify", "ACME.test")
    assert "acme.test is verified for acme" in capsys.readouterr().out
    assert provider.domains.get().verified_by == "manage.py sso_domain_verify"
    assert tenant.audit_log.filter(action="sso.domain_verified").exists()


def test_the_command_explains_what_it_cannot_do(acme):
    tenant, *_ = acme
    with pytest.raises(CommandError, match="No identity provider lists the domain unknown.test"):
        call_command("sso_domain_verify", "unknown.test")
    make_provider(tenant)
    other = make_provider(other_tenant("Other"))
    with pytest.raises(CommandError, match="claimed by several tenants"):
        call_command("sso_domain_verify", "acme.test")
    call_command("sso_domain_verify", "acme.test", "--identity-provider", str(other.pk))
    assert identity_provider_for_email("x@acme.test") == other


def test_staff_verify_in_admin(acme, admin_client):
    tenant, *_ = acme
    provider = make_provider(tenant)
    response = admin_client.post("/admin/sso/identityprovider/", {
        "action": "verify_domains_by_staff", "_selected_action": [provider.pk]})
    assert response.status_code == 302
    assert provider.domains.get().verified_by.startswith("staff:")


def test_staff_create_an_identity_provider_in_admin(acme, admin_client):
    tenant, *_ = acme
    response = admin_client.post("/admin/sso/identityprovider/add/", {
        "tenant": tenant.pk, "kind": "oidc", "issuer": "https://idp.acme.test", "client_id": "hearth",
        "client_secret": "from-admin", "scopes": "openid email", "claim_mapping": "{}", "attribute_mapping": "{}",
        "default_role": "member", "group_roles": "{}", "domains_text": "acme.test\nACME.test"})
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider = tenant.identity_providers.get()
    assert [d.domain for d in provider.domains.all()] == ["acme.test"]
    response = admin_client.post("/admin/sso/identityprovider/add/", {
        "tenant": tenant.pk, "kind": "oidc", "issuer": "https://idp.acme.test", "client_id": "hearth",
        "scopes": "openid", "claim_mapping": "{}", "attribute_mapping": "{}", "default_role": "member",
        "group_roles": "{}", "domains_text": ""})
    assert response.status_code == 200 and "needs client_secret" in response.content.decode()
