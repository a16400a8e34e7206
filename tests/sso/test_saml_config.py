"""A SAML identity provider's configuration: the API and admin check its metadata and attribute mapping, give it
Hearth's own SP key pair (the private key never shown), and say which URLs to enter at the IdP; the attributes an
assertion carries become Hearth's claims; an assertion signs in once (sso.saml_replay)."""
from datetime import timedelta

import pytest
from django.utils import timezone
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NAMEID_FORMAT_PERSISTENT, NAMEID_FORMAT_TRANSIENT, NameID

from sso import encryption
from sso.models import SamlAssertion
from sso.saml import assertion_claims
from sso.saml_replay import saml_assertion_use
from sso.views import TokenRejected
from tests.conftest import api_client_for

pytestmark = pytest.mark.django_db
URL = "/api/v1/identity-providers"


def test_an_owner_creates_a_saml_idp_from_its_metadata(acme, saml_idp, settings):
    settings.HEARTH_BASE_URL = "https://hearth.example.com"
    tenant, owner, *_ = acme
    response = api_client_for(owner).post(URL, {"kind": "saml", "metadata_xml": saml_idp.metadata_xml,
                                                "domains": ["acme.test"], "attribute_mapping": {"email": "mail"}},
                                          format="json")
    assert response.status_code == 201, response.json()
    body = response.json()
    assert body["entity_id"] == saml_idp.entity_id  # read from the metadata
    assert body["sp_metadata_url"] == f"https://hearth.example.com/sso/saml/{body['id']}/metadata/"
    assert body["sp_acs_url"] == f"https://hearth.example.com/sso/saml/{body['id']}/acs/"
    provider = tenant.identity_providers.get()
    key = encryption.decrypt(provider.sp_private_key_encrypted)
    assert key.startswith("-----BEGIN PRIVATE KEY-----") and provider.sp_certificate.startswith("-----BEGIN CERT")
    assert "PRIVATE KEY" not in response.content.decode() and key[40:80] not in response.content.decode()
    oidc = api_client_for(owner).post(URL, {"kind": "oidc", "issuer": "https://login.acme.test", "client_id": "x",
                                            "client_secret": "y"}, format="json").json()
    assert oidc["sp_metadata_url"] is None and oidc["sp_acs_url"] is None


@pytest.mark.parametrize("change, field, reason", [
    ({"metadata_xml": "<not-metadata/>"}, "metadata_xml", "describes no identity provider"),
    ({"metadata_xml": "this is not XML"}, "metadata_xml", "not valid SAML metadata"),
    ({"entity_id": "https://someone-else.test/idp"}, "entity_id", "does not describe the identity provider"),
    ({"metadata_xml": None}, "metadata_url", "needs metadata_url or metadata_xml"),
    ({"metadata_xml": None, "metadata_url": "file:///etc/passwd"}, "metadata_url", "not an http(s) URL"),
    ({"attribute_mapping": {"shoe_size": "x"}}, "attribute_mapping", "Unknown keys"),
    ({"client_id": "x"}, "client_id", "Not a field of a saml"),
], ids=["not-metadata", "not-xml", "unknown-entity", "no-metadata", "bad-url", "unknown-attribute", "oidc-field"])
def test_bad_saml_input_is_a_clear_400(acme, saml_idp, change, field, reason):
    tenant, owner, *_ = acme
    body = {"kind": "saml", "metadata_xml": saml_idp.metadata_xml, "domains": ["acme.test"], **change}
    body = {k: v for k, v in body.items() if v is not None}
    response = api_client_for(owner).post(URL, body, format="json")
    assert response.status_code == 400, response.json()
    assert field in str(response.json()) and reason in response.json()["detail"]
    assert not tenant.identity_providers.exists()


def test_metadata_without_a_signing_certificate_is_refused(acme, saml_idp):
    import re

    tenant, owner, *_ = acme
    unsigned = re.sub(r"<ns\d*:KeyDescriptor.*?</ns\d*:KeyDescriptor>|<md:KeyDescriptor.*?</md:KeyDescriptor>", "",
                      saml_idp.metadata_xml, flags=re.S)
    assert unsigned != saml_idp.metadata_xml
    response = api_client_for(owner).post(URL, {"kind": "saml", "metadata_xml": unsigned}, format="json")
    assert response.status_code == 400 and "no signing certificate" in response.json()["detail"]


def test_staff_see_metadata_errors_and_the_sp_urls_in_admin(acme, saml_idp, admin_client):
    tenant, *_ = acme
    form = {"tenant": tenant.pk, "kind": "saml", "metadata_xml": "<oops", "scopes": "openid", "claim_mapping": "{}",
            "attribute_mapping": "{}", "default_role": "member", "group_roles": "{}", "domains_text": "acme.test"}
    response = admin_client.post("/admin/sso/identityprovider/add/", form)
    assert response.status_code == 200 and "not valid SAML metadata" in response.content.decode()
    response = admin_client.post("/admin/sso/identityprovider/add/", {**form, "metadata_xml": saml_idp.metadata_xml})
    assert response.status_code == 302, response.context["adminform"].form.errors
    provider = tenant.identity_providers.get()
    page = admin_client.get(f"/admin/sso/identityprovider/{provider.pk}/change/").content.decode()
    assert f"/sso/saml/{provider.pk}/acs/" in page and f"/sso/saml/{provider.pk}/metadata/" in page
    assert provider.sp_certificate and "PRIVATE KEY" not in page


def test_attributes_become_claims_through_the_mapping(acme, saml_idp):
    from tests.sso.conftest import saml_provider_for

    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp, attribute_mapping={"email": "mail", "groups": "memberOf"})
    info = {"ava": {"mail": ["Ada@Acme.test"], "name": ["Ada Lovelace"], "memberOf": ["a", "b"], "email": ["x@y"]},
            "name_id": NameID(format=NAMEID_FORMAT_PERSISTENT, text="00u1")}
    subject, claims = assertion_claims(provider, info)
    assert subject == "00u1" and claims["email"] == "Ada@Acme.test" and claims["groups"] == ["a", "b"]
    assert claims["name"] == "Ada Lovelace" and claims["email_verified"] is True
    # No address attribute: an emailAddress NameID is the address; a transient NameID is not a stable subject.
    subject, claims = assertion_claims(provider, {"ava": {}, "name_id": NameID(format=NAMEID_FORMAT_EMAILADDRESS,
                                                                               text="ada@acme.test")})
    assert (subject, claims["email"]) == ("ada@acme.test", "ada@acme.test")
    subject, _ = assertion_claims(provider, {"ava": {"mail": ["ada@acme.test"]},
                                             "name_id": NameID(format=NAMEID_FORMAT_TRANSIENT, text="_t1")})
    assert subject == "ada@acme.test"
    with pytest.raises(TokenRejected, match="no usable NameID"):
        assertion_claims(provider, {"ava": {}, "name_id": NameID(format=NAMEID_FORMAT_PERSISTENT, text="")})


def test_an_assertion_signs_in_once_until_it_expires(acme, saml_idp):
    from tests.sso.conftest import saml_provider_for

    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp)
    other = saml_provider_for(tenant, saml_idp, domains=("acme-labs.test",))
    later = (timezone.now() + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    saml_assertion_use(identity_provider=provider, assertion_id="_a1", not_on_or_after=later)
    with pytest.raises(TokenRejected) as refused:
        saml_assertion_use(identity_provider=provider, assertion_id="_a1", not_on_or_after=later)
    assert refused.value.code == "sso_saml_replayed"
    # Another IdP's ids are its own (no IdP can use up another's).
    saml_assertion_use(identity_provider=other, assertion_id="_a1", not_on_or_after=later)
    # Kept until NotOnOrAfter + the leeway, then deleted by the next use.
    SamlAssertion.objects.filter(assertion_id="_a1").update(not_on_or_after=timezone.now() - timedelta(seconds=1))
    saml_assertion_use(identity_provider=provider, assertion_id="_a2", not_on_or_after=later)
    assert list(SamlAssertion.objects.values_list("assertion_id", flat=True)) == ["_a2"]
    with pytest.raises(TokenRejected, match="no id"):
        saml_assertion_use(identity_provider=provider, assertion_id="", not_on_or_after=later)


def test_patching_the_metadata_checks_it_again_and_other_tenants_get_404(acme, saml_idp):
    from tests.factories import MembershipFactory, TenantFactory
    from tests.sso.saml_idp import SamlIdp

    tenant, owner, admin, _ = acme
    api = api_client_for(owner)
    created = api.post(URL, {"kind": "saml", "metadata_xml": saml_idp.metadata_xml}, format="json").json()
    response = api.patch(f"{URL}/{created['id']}", {"metadata_xml": "<broken"}, format="json")
    assert response.status_code == 400 and response.json()["field"] == "metadata_xml"
    other_idp = SamlIdp()
    try:
        response = api.patch(f"{URL}/{created['id']}", {"metadata_xml": other_idp.metadata_xml}, format="json")
        assert response.status_code == 200 and response.json()["entity_id"] == other_idp.entity_id
    finally:
        other_idp.stop()
    assert api_client_for(admin).patch(f"{URL}/{created['id']}", {"entity_id": "x"}, format="json").status_code == 403
    stranger = MembershipFactory(role="owner", tenant=TenantFactory(plan=tenant.plan))
    response = api_client_for(stranger).patch(f"{URL}/{created['id']}", {"metadata_xml": saml_idp.metadata_xml},
                                              format="json")
    assert response.status_code == 404
    assert tenant.identity_providers.get().entity_id == other_idp.entity_id
