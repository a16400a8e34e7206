"""The owners' portal pages of single sign-on (/sso/settings/): list, add, edit, delete, domains and their DNS
check, with the API's own validation (sso.services) behind the form; owners only, another tenant's is not found,
a plan without SSO sees the upgrade notice."""
import html

import pytest
from django.urls import reverse

from sso import encryption
from sso.models import IdentityProvider, SsoDomain
from tenants.models import Plan
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db

OIDC_FORM = {"issuer": "https://idp.acme.test", "client_id": "hearth", "client_secret": "s3cret-value",
             "scopes": "openid email profile groups", "domains": "acme.test\nacme-corp.test",
             "default_role": "member", "group_roles": "platform-admins = admin\nstaff: member", "claim_mapping": ""}


def text(response):
    return html.unescape(response.content.decode())


def create(client, **changes):
    return client.post(reverse("sso:settings-create", args=["oidc"]), {**OIDC_FORM, **changes})


@pytest.fixture
def owner_client(client, acme):
    client.force_login(acme[1].user)
    return client


def test_owner_adds_an_oidc_provider_and_sees_the_txt_records(owner_client, acme):
    tenant = acme[0]
    page = owner_client.get(reverse("sso:settings"))
    assert page.status_code == 200 and "No identity provider yet" in text(page)
    assert "/sso/oidc/callback/" in text(page)

    response = create(owner_client)

    provider = IdentityProvider.objects.get(tenant=tenant)
    assert response.status_code == 302 and response["Location"].endswith(f"#idp-{provider.pk}")
    assert provider.issuer == "https://idp.acme.test" and provider.scopes == "openid email profile groups"
    assert provider.group_roles == {"platform-admins": "admin", "staff": "member"}
    assert encryption.decrypt(provider.client_secret_encrypted) == "s3cret-value"
    page = text(owner_client.get(reverse("sso:settings")))
    for row in provider.domains.all():
        assert row.domain in page and row.txt_record in page
    assert "s3cret-value" not in page and "not verified" in page
    # The secret is write-only: the edit form does not carry it back.
    assert "s3cret-value" not in text(owner_client.get(reverse("sso:settings-edit", args=[provider.pk])))


def test_edit_keeps_the_secret_when_left_empty_and_keeps_verified_domains(owner_client, acme):
    create(owner_client)
    provider = IdentityProvider.objects.get(tenant=acme[0])
    SsoDomain.objects.filter(domain="acme.test").update(verified_at="2026-01-01T00:00Z", verified_by="test")
    secret = provider.client_secret_encrypted

    response = owner_client.post(reverse("sso:settings-edit", args=[provider.pk]),
                                 {**OIDC_FORM, "client_secret": "", "domains": "acme.test", "enforce_sso": "on",
                                  "default_role": "admin", "group_roles": ""})

    assert response.status_code == 302, text(response)[:2000]
    provider.refresh_from_db()
    assert provider.client_secret_encrypted == secret and provider.default_role == "admin" and provider.enforce_sso
    assert provider.group_roles == {}
    assert [(d.domain, d.verified_at is not None) for d in provider.domains.all()] == [("acme.test", True)]
    acme[0].refresh_from_db()
    assert acme[0].sso_enforced_at is not None
    assert "Single sign-on is enforced" in text(owner_client.get(reverse("sso:settings")))
    # A new secret rotates it.
    owner_client.post(reverse("sso:settings-edit", args=[provider.pk]), {**OIDC_FORM, "client_secret": "rotated"})
    provider.refresh_from_db()
    assert encryption.decrypt(provider.client_secret_encrypted) == "rotated"


@pytest.mark.parametrize(("changes", "field", "message", "status"), [
    ({"issuer": "not-a-url"}, "issuer", "is not an http(s) URL", 400),
    ({"scopes": "email profile"}, "scopes", "must include 'openid'", 400),
    ({"domains": "not_a_domain"}, "domains", "is not a domain name", 400),
    ({"group_roles": "admins = owner"}, "group_roles", "cannot be given by an identity provider", 400),
    ({"group_roles": "just-a-group"}, "group_roles", "write each line as name = value", 400),
    ({"claim_mapping": "colour = favourite_colour"}, "claim_mapping", "Unknown keys in 'claim_mapping'", 400),
    ({"client_secret": ""}, "client_secret", "needs client_secret", 400),
    ({"default_role": "owner"}, "default_role", "Select a valid choice", 400),
])
def test_bad_input_is_a_form_error_on_its_field(owner_client, acme, changes, field, message, status):
    response = create(owner_client, **changes)

    assert response.status_code == status
    errors = response.context["form"].errors
    assert field in errors and message in " ".join(errors[field]), errors
    assert not IdentityProvider.objects.filter(tenant=acme[0]).exists()


def test_a_domain_verified_by_another_tenant_is_a_409_on_the_domains_field(owner_client, acme):
    other = TenantFactory(plan=Plan.objects.get(slug="enterprise"))
    other_owner = MembershipFactory(tenant=other, role="owner").user
    from sso import services

    services.identity_provider_create(tenant=other, actor=other_owner, issuer="https://idp.other.test",
                                      client_id="x", client_secret="y", domains=["acme.test"])
    services.domain_verify_by_staff(domain="acme.test", actor="test")

    response = create(owner_client)

    assert response.status_code == 409
    assert "already verified by another identity provider" in " ".join(response.context["form"].errors["domains"])


def test_verify_now_reads_the_txt_record(owner_client, acme, dns_server):
    create(owner_client, domains="acme.test\nacme-corp.test")
    provider = IdentityProvider.objects.get(tenant=acme[0])
    row = provider.domains.get(domain="acme.test")
    dns_server.records["acme.test"] = [row.txt_record]

    response = owner_client.post(reverse("sso:settings-verify", args=[provider.pk]), follow=True)

    assert response.status_code == 200
    assert "No matching TXT record found yet for acme-corp.test" in text(response)
    assert provider.domains.get(domain="acme.test").verified_by == "dns"
    assert provider.domains.get(domain="acme-corp.test").verified_at is None


def test_verify_now_with_dns_down_is_a_503_with_a_message(owner_client, acme, settings):
    create(owner_client, domains="acme.test")
    provider = IdentityProvider.objects.get(tenant=acme[0])
    settings.SSO_DNS_NAMESERVERS = ["127.0.0.1:9"]  # nothing answers there
    settings.SSO_DNS_TIMEOUT = 0.5

    response = owner_client.post(reverse("sso:settings-verify", args=[provider.pk]))

    assert response.status_code == 503 and "The DNS lookup of acme.test failed" in text(response)


def test_owner_deletes_a_provider(owner_client, acme):
    create(owner_client)
    provider = IdentityProvider.objects.get(tenant=acme[0])
    response = owner_client.post(reverse("sso:settings-delete", args=[provider.pk]))
    assert response.status_code == 302 and not IdentityProvider.objects.filter(pk=provider.pk).exists()


def test_saml_fields_are_shown_and_saved(owner_client, acme):
    page = text(owner_client.get(reverse("sso:settings-create", args=["saml"])))
    assert "IdP metadata URL" in page and "Client secret" not in page

    response = owner_client.post(reverse("sso:settings-create", args=["saml"]), {
        "metadata_url": "https://idp.acme.test/metadata", "entity_id": "https://idp.acme.test",
        "attribute_mapping": "email = mail", "domains": "acme.test", "default_role": "member"})

    assert response.status_code == 302, text(response)[:2000]
    provider = IdentityProvider.objects.get(tenant=acme[0])
    assert provider.kind == "saml" and provider.attribute_mapping == {"email": "mail"}
    assert owner_client.get(reverse("sso:settings-create", args=["ldap"])).status_code == 404


@pytest.mark.parametrize("role", ["admin", "member"])
def test_admins_and_members_are_refused_every_page(client, acme, role):
    tenant, owner, admin, member = acme
    from sso import services

    provider = services.identity_provider_create(tenant=tenant, actor=owner.user, issuer="https://idp.acme.test",
                                                 client_id="x", client_secret="y", domains=["acme.test"])
    client.force_login((admin if role == "admin" else member).user)
    pages = [("get", reverse("sso:settings")), ("get", reverse("sso:settings-create", args=["oidc"])),
             ("post", reverse("sso:settings-create", args=["oidc"])),
             ("get", reverse("sso:settings-edit", args=[provider.pk])),
             ("post", reverse("sso:settings-edit", args=[provider.pk])),
             ("post", reverse("sso:settings-delete", args=[provider.pk])),
             ("post", reverse("sso:settings-verify", args=[provider.pk]))]
    for method, url in pages:
        response = getattr(client, method)(url, OIDC_FORM if method == "post" else None)
        assert response.status_code == 403, (method, url)
        assert "Only the tenant's owners can do this." in text(response)
    assert IdentityProvider.objects.filter(tenant=tenant).count() == 1
    assert 'href="/sso/settings/"' not in text(client.get(reverse("portal:dashboard")))


def test_another_tenants_provider_is_not_found(client, acme):
    tenant, owner, *_ = acme
    from sso import services

    provider = services.identity_provider_create(tenant=tenant, actor=owner.user, issuer="https://idp.acme.test",
                                                 client_id="x", client_secret="y", domains=["acme.test"])
    other = TenantFactory(plan=Plan.objects.get(slug="enterprise"))
    client.force_login(MembershipFactory(tenant=other, role="owner").user)

    for method, name in (("get", "sso:settings-edit"), ("post", "sso:settings-edit"), ("post", "sso:settings-delete"),
                         ("post", "sso:settings-verify")):
        response = getattr(client, method)(reverse(name, args=[provider.pk]), OIDC_FORM if method == "post" else None)
        assert response.status_code == 404, (method, name)
    assert "idp.acme.test" not in text(client.get(reverse("sso:settings")))
    provider.refresh_from_db()
    assert provider.client_id == "x" and IdentityProvider.objects.filter(pk=provider.pk).exists()


def test_a_plan_without_sso_sees_the_upgrade_notice(client):
    tenant = TenantFactory(plan=Plan.objects.get(slug="free"))
    client.force_login(MembershipFactory(tenant=tenant, role="owner").user)

    page = client.get(reverse("sso:settings"))
    assert page.status_code == 200 and 'data-code="plan_without_sso"' in text(page)
    assert "does not include single sign-on" in text(page) and reverse("portal:plans") in text(page)
    assert "Add an identity provider" not in text(page)
    response = create(client)
    assert response.status_code == 403 and not IdentityProvider.objects.filter(tenant=tenant).exists()


def test_owners_find_the_page_from_the_navigation_and_settings(owner_client):
    assert 'href="/sso/settings/"' in text(owner_client.get(reverse("portal:dashboard")))
    assert "Configure single sign-on" in text(owner_client.get(reverse("portal:tenant_settings")))
