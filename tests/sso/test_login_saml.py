"""SAML sign-in through a tenant's identity provider, against a real IdP (pysaml2's Server signing with xmlsec1,
tests/sso/saml_idp.py) over HTTP: routing by verified domain, the AuthnRequest by HTTP-Redirect, the signed
Response by HTTP-POST, JIT provisioning and role mapping, and every refusal (unsigned, tampered, replayed, wrong
audience, unknown InResponseTo, another tenant's addresses, unverified domains)."""
import base64
import html
import re
from urllib.parse import parse_qs, urlparse

import pytest
import requests
from django.urls import reverse

from sso.models import SsoIdentity
from tenants.models import Membership, User
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import saml_provider_for
from tests.sso.saml_idp import posted_form

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _base_url(settings):
    settings.HEARTH_BASE_URL = "http://testserver"  # the Django test client's host: the SP's ACS and entity id


def text(response):
    return html.unescape(response.content.decode())


def start(client, email):
    """Hearth's first steps: the address, then the redirect to the IdP with the AuthnRequest."""
    response = client.get(reverse("sso:login"), {"email": email})
    assert response.status_code == 302, response.content[:300]
    assert response["Location"].startswith("/sso/saml/"), response["Location"]
    response = client.get(response["Location"])
    assert response.status_code == 302, text(response)[:500]
    return response["Location"]


def idp_answer(authn_url, *, login, **knobs):
    """The IdP's login page, then its auto-posting form: (ACS URL, fields)."""
    page = requests.get(authn_url, timeout=10)
    page.raise_for_status()
    query = parse_qs(urlparse(authn_url).query)
    form = {"SAMLRequest": query["SAMLRequest"][0], "RelayState": query.get("RelayState", [""])[0], "login": login,
            "password": "any", **knobs}
    answer = requests.post(urlparse(authn_url)._replace(path="/sso/login", query="").geturl(), data=form, timeout=10)
    assert answer.status_code == 200, answer.text[:500]
    return posted_form(answer.text)


def acs_post(client, action, fields):
    parsed = urlparse(action)
    assert f"{parsed.scheme}://{parsed.netloc}" == "http://testserver", action
    return client.post(parsed.path, fields)


def sign_in(client, email, *, login=None, **knobs):
    action, fields = idp_answer(start(client, email), login=login or email, **knobs)
    return acs_post(client, action, fields)


def signed_in_user(client):
    user_id = client.session.get("_auth_user_id")
    return User.objects.get(pk=user_id) if user_id else None


def test_first_sign_in_provisions_the_member_with_the_mapped_role(client, acme, saml_idp):
    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp, group_roles={"platform-admins": "admin"})
    authn_url = start(client, "ada@acme.test")
    query = parse_qs(urlparse(authn_url).query)
    assert authn_url.startswith(f"{saml_idp.url}/sso/redirect?")
    assert query["SigAlg"] == ["http://www.w3.org/2001/04/xmldsig-more#rsa-sha256"] and query["Signature"]

    action, fields = idp_answer(authn_url, login="ada@acme.test")
    assert action == f"http://testserver/sso/saml/{provider.pk}/acs/"
    response = acs_post(client, action, fields)

    assert response.status_code == 302 and response["Location"] == reverse("portal:dashboard"), text(response)
    user = signed_in_user(client)
    assert user.email == "ada@acme.test" and (user.first_name, user.last_name) == ("Ada", "Lovelace")
    assert not user.has_usable_password()
    assert Membership.objects.get(tenant=tenant, user=user).role == "admin"
    assert SsoIdentity.objects.get(identity_provider=provider).user == user
    assert client.session["hearth_sso_login"]["tenant"] == tenant.pk
    assert tenant.audit_log.filter(action="member.joined", target="ada@acme.test").exists()


def test_later_sign_ins_update_the_role_and_the_session_cookie_follows_a_cross_site_post(client, acme, saml_idp):
    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp, group_roles={"platform-admins": "admin"})
    authn_url = start(client, "ada@acme.test")
    cookie = client.cookies["saml_session"]
    assert cookie["samesite"] == "None" and cookie["secure"] is True  # the IdP's POST is cross-site
    acs_post(client, *idp_answer(authn_url, login="ada@acme.test"))
    provider.group_roles = {}
    provider.save()
    client.logout()
    assert sign_in(client, "ada@acme.test").status_code == 302
    assert Membership.objects.get(tenant=tenant, user__email="ada@acme.test").role == "member"
    assert User.objects.filter(email="ada@acme.test").count() == 1


def test_an_encrypted_assertion_is_decrypted_with_the_sp_key(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    action, fields = idp_answer(start(client, "ada@acme.test"), login="ada@acme.test", encrypt="1")
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    assert "EncryptedAssertion" in xml and "ada@acme.test" not in xml
    response = acs_post(client, action, fields)
    assert response.status_code == 302, text(response)[:2000]
    assert signed_in_user(client).email == "ada@acme.test"


def test_an_unsigned_assertion_is_refused(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    response = sign_in(client, "ada@acme.test", unsigned="1")
    assert response.status_code == 400 and "assertion is not signed" in text(response)
    assert 'data-code="sso_saml_unsigned"' in text(response)
    assert signed_in_user(client) is None and not User.objects.filter(email="ada@acme.test").exists()
    # A signature on the response only is not enough either.
    response = sign_in(client, "ada@acme.test", unsigned="1", sign_response="1")
    assert response.status_code == 400 and "assertion is not signed" in text(response)


def test_a_response_changed_after_signing_is_refused(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    action, fields = idp_answer(start(client, "ada@acme.test"), login="ada@acme.test")
    xml = base64.b64decode(fields["SAMLResponse"]).decode()
    assert xml.count("ada@acme.test") >= 1
    fields["SAMLResponse"] = base64.b64encode(xml.replace("ada@acme.test", "owner@acme.test").encode()).decode()
    response = acs_post(client, action, fields)
    assert response.status_code == 400 and "failed its signature check" in text(response)
    assert signed_in_user(client) is None


def _saml_session_outstanding(client, provider, request_id):
    """What a second, concurrent POST of the same response sees: the request still outstanding in the session."""
    from django.contrib.sessions.backends.db import SessionStore

    session = SessionStore()
    session[f"_saml2_outstanding_queries:{provider.pk}"] = {request_id: "/"}
    session.save()
    client.cookies["saml_session"] = session.session_key


def test_a_replayed_response_is_refused(client, acme, saml_idp):
    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp)
    action, fields = idp_answer(start(client, "ada@acme.test"), login="ada@acme.test")
    assert acs_post(client, action, fields).status_code == 302
    client.logout()
    # Its request was answered: the same response again answers nothing outstanding.
    response = acs_post(client, action, fields)
    assert response.status_code == 400 and "answers no sign-in started" in text(response)
    assert signed_in_user(client) is None
    # Even with the request still outstanding (two POSTs at once), the assertion signs in once only.
    request_id = re.search(r'InResponseTo="([^"]+)"', base64.b64decode(fields["SAMLResponse"]).decode()).group(1)
    _saml_session_outstanding(client, provider, request_id)
    response = acs_post(client, action, fields)
    assert response.status_code == 400 and "already used to sign in" in text(response)
    assert 'data-code="sso_saml_replayed"' in text(response) and signed_in_user(client) is None


def test_a_wrong_audience_is_refused(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    response = sign_in(client, "ada@acme.test", audience="https://another-sp.test/metadata/")
    assert response.status_code == 400 and "meant for another service" in text(response)
    assert signed_in_user(client) is None


def test_an_unknown_in_response_to_is_refused(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    response = sign_in(client, "ada@acme.test", in_response_to="id-nobody-asked-for-this")
    assert response.status_code == 400 and "answers no sign-in started" in text(response)
    assert signed_in_user(client) is None


def test_a_response_to_another_browsers_request_is_refused(client, acme, saml_idp):
    from django.test import Client

    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    action, fields = idp_answer(start(client, "ada@acme.test"), login="ada@acme.test")
    attacker = Client()
    start(attacker, "ada@acme.test")  # the attacker's browser has a request of its own outstanding
    response = acs_post(attacker, action, fields)
    assert response.status_code == 400 and "answers no sign-in started" in text(response)
    assert signed_in_user(attacker) is None


def test_a_response_to_a_request_sent_to_another_idp_is_refused(client, acme, saml_idp):
    """Two tenants' IdPs share the IdP's metadata; a response to a request sent to Globex's answers nothing at
    Acme's ACS, even addressed to it: the outstanding requests are kept per IdP."""
    tenant, *_ = acme
    acme_idp = saml_provider_for(tenant, saml_idp)
    globex = TenantFactory(name="Globex", slug="globex", plan=tenant.plan)
    MembershipFactory(tenant=globex, role="owner", user__email="boss@globex.test")
    saml_provider_for(globex, saml_idp, domains=("globex.test",))
    acs = f"http://testserver/sso/saml/{acme_idp.pk}/acs/"
    action, fields = idp_answer(start(client, "boss@globex.test"), login="ada@acme.test", destination=acs,
                                audience=f"http://testserver/sso/saml/{acme_idp.pk}/metadata/")
    assert action == acs
    response = acs_post(client, action, fields)
    assert response.status_code == 400 and "answers no sign-in started" in text(response)
    assert signed_in_user(client) is None


def test_the_idps_refusal_is_shown(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp)
    response = sign_in(client, "ada@acme.test", refuse="Ada is not assigned to Hearth")
    assert response.status_code == 403 and "refused the sign-in: Ada is not assigned to Hearth" in text(response)
    assert 'data-code="sso_idp_refused"' in text(response) and signed_in_user(client) is None


def test_tenant_a_idp_cannot_sign_in_an_address_of_tenant_b(client, acme, saml_idp):
    tenant, *_ = acme
    globex = TenantFactory(name="Globex", slug="globex")
    victim = MembershipFactory(tenant=globex, role="owner", user__email="boss@globex.test")
    saml_provider_for(globex, saml_idp, domains=("globex.test",))
    saml_provider_for(tenant, saml_idp)
    # Acme's IdP is asked for an Acme address but asserts a Globex one (signed with a key Acme configured).
    response = sign_in(client, "ada@acme.test", login="boss@globex.test")
    assert response.status_code == 403 and "not an address of Acme's verified domains" in text(response)
    assert signed_in_user(client) is None
    assert list(Membership.objects.filter(user=victim.user).values_list("tenant__slug", flat=True)) == ["globex"]


def test_an_unverified_domain_neither_routes_nor_signs_in(client, acme, saml_idp):
    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp, verified=False)
    response = client.get(reverse("sso:login"), {"email": "ada@acme.test"})
    assert response["Location"] == f"{reverse('account_login')}?email=ada%40acme.test"
    assert client.get(reverse("sso:saml-login", args=[provider.pk])).status_code == 404
    assert client.post(reverse("sso:saml-acs", args=[provider.pk]), {"SAMLResponse": "x"}).status_code == 404


def test_an_address_of_a_domain_the_idp_has_not_verified_is_refused(client, acme, saml_idp):
    tenant, *_ = acme
    saml_provider_for(tenant, saml_idp, domains=("acme.test", "acme-labs.test"), verified=False)
    from sso import services

    services.domain_verify_by_staff(domain="acme.test", actor="test")
    response = sign_in(client, "ada@acme.test", login="grace@acme-labs.test")
    assert response.status_code == 403 and "not an address of Acme's verified domains" in text(response)
    assert not User.objects.filter(email="grace@acme-labs.test").exists()


def test_the_sp_metadata_is_published_at_a_stable_url(client, acme, saml_idp):
    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp, verified=False)
    response = client.get(f"/sso/saml/{provider.pk}/metadata/")
    xml = response.content.decode()
    assert response.status_code == 200 and response["Content-Type"].startswith("text/xml")
    assert f'entityID="http://testserver/sso/saml/{provider.pk}/metadata/"' in xml
    assert f'Location="http://testserver/sso/saml/{provider.pk}/acs/"' in xml
    assert 'AuthnRequestsSigned="true"' in xml and 'WantAssertionsSigned="true"' in xml
    certificate = "".join(provider.sp_certificate.splitlines()[1:-1])
    assert certificate in xml.replace("\n", "")
    assert "PRIVATE" not in xml and tenant.name not in xml
    assert client.get("/sso/saml/999999/metadata/").status_code == 404


def test_an_idp_metadata_url_that_does_not_answer_is_a_503_page(client, acme, saml_idp):
    from sso.models import IdentityProvider
    from tests.sso.support import free_port

    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp)
    IdentityProvider.objects.filter(pk=provider.pk).update(metadata_xml="",
                                                           metadata_url=f"http://127.0.0.1:{free_port()}/md")
    response = client.get(reverse("sso:saml-login", args=[provider.pk]))
    assert response.status_code == 503 and "could not be read" in text(response)
    IdentityProvider.objects.filter(pk=provider.pk).update(metadata_url=f"{saml_idp.url}/not-metadata")
    response = client.get(reverse("sso:saml-login", args=[provider.pk]))
    assert response.status_code == 503 and "cannot be used: The IdP metadata does not describe" in text(response)
    # Fetched from a URL that answers with the IdP's metadata, it is used (and cached).
    IdentityProvider.objects.filter(pk=provider.pk).update(metadata_url=f"{saml_idp.url}/metadata")
    response = client.get(reverse("sso:saml-login", args=[provider.pk]))
    assert response.status_code == 302 and response["Location"].startswith(f"{saml_idp.url}/sso/redirect?")


def test_another_idp_of_the_same_metadata_is_refused(client, acme, saml_idp):
    """Metadata that describes several IdPs (a federation's aggregate): only the one named by entity_id signs in,
    though pysaml2 accepts a signature of any of them."""
    from tests.sso.saml_idp import SamlIdp

    other = SamlIdp(accounts={}, sso_url=f"{saml_idp.url}/sso/redirect")  # it answers requests sent to the first
    try:
        tenant, *_ = acme
        strip = lambda xml: xml.split("?>", 1)[-1] if xml.startswith("<?xml") else xml  # noqa: E731
        aggregate = ('<md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata">'
                     f"{strip(saml_idp.metadata_xml)}{strip(other.metadata_xml)}</md:EntitiesDescriptor>")
        provider = saml_provider_for(tenant, saml_idp, metadata_xml=aggregate, entity_id=saml_idp.entity_id)
        other.trust(client.get(f"/sso/saml/{provider.pk}/metadata/").content.decode())
        authn_url = start(client, "ada@acme.test")
        assert authn_url.startswith(saml_idp.url)  # the request goes to the chosen IdP only
        response = acs_post(client, *idp_answer(authn_url.replace(saml_idp.url, other.url), login="ada@acme.test"))
        assert response.status_code == 400 and "not by this identity provider" in text(response)
        assert signed_in_user(client) is None
    finally:
        other.stop()


def test_a_post_without_a_valid_saml_response_is_a_clear_400(client, acme, saml_idp):
    tenant, *_ = acme
    provider = saml_provider_for(tenant, saml_idp)
    acs = reverse("sso:saml-acs", args=[provider.pk])
    response = client.post(acs, {})
    assert response.status_code == 400 and "No SAML response was posted" in text(response)
    response = client.post(acs, {"SAMLResponse": "bm90IFhNTA=="})  # base64 of "not XML"
    assert response.status_code == 400 and "response was refused" in text(response)
    assert signed_in_user(client) is None
