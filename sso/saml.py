"""SAML 2.0 sign-in through djangosaml2 / pysaml2 (with xmlsec1), one tenant's identity provider per request.

djangosaml2's views read one SP configuration; here they are subclassed so that the configuration is Hearth as the
SP of the IdP named in the URL (sso.saml_config): `login/` sends a signed AuthnRequest by HTTP-Redirect, the IdP
answers by HTTP-POST to `acs/`, `metadata/` publishes Hearth's SP metadata. pysaml2 checks the assertion's
signature (required) against the IdP's metadata, its audience (Hearth's entity id for this IdP), the recipient and
destination (this ACS URL), its validity window and InResponseTo (an AuthnRequest of this browser session to this
IdP); Hearth adds the issuer, the single use of each assertion (sso.saml_replay), then provisions the member with
the same rules as OIDC (sso.provisioning). Every refusal ends on sso/login_failed.html with its reason.
"""
from contextlib import contextmanager

from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import SuspiciousOperation
from django.http import Http404
from django.utils import timezone
from djangosaml2.middleware import SamlSessionMiddleware as _SamlSessionMiddleware
from djangosaml2.views import AssertionConsumerServiceView, LoginView, MetadataView
from saml2.response import StatusError, UnsolicitedResponse
from saml2.saml import NAMEID_FORMAT_EMAILADDRESS, NAMEID_FORMAT_TRANSIENT
from saml2.sigver import SignatureError
from saml2.validate import ResponseLifetimeExceed, ToEarly

from sso import saml_config
from sso.models import SAML_ATTRIBUTES, IdentityProvider
from sso.provisioning import sso_login_provision
from sso.saml_replay import saml_assertion_use
from sso.views import TokenRejected, login_failed, routable_provider
from tenants.exceptions import Forbidden, ServiceError
from tenants.portal import choose_tenant, sso_login_remember

SAML = IdentityProvider.Kind.SAML
PATH_PREFIX = "/sso/saml/"
# djangosaml2.cache.OutstandingQueriesCache keeps the ids of the AuthnRequests awaiting an answer under this key.
OUTSTANDING_KEY = "_saml2_outstanding_queries"
MAX_OUTSTANDING = 10  # per IdP and browser: a few tabs started at once, never an unbounded session


class SamlSessionMiddleware(_SamlSessionMiddleware):
    """djangosaml2's own session for a SAML sign-in (the outstanding AuthnRequest ids), on /sso/saml/ only. The
    IdP answers with a cross-site POST, which the SameSite=Lax session cookie does not follow, so this cookie is
    SameSite=None — and so Secure, which browsers require of such a cookie (and accept on http://localhost)."""

    def __call__(self, request):
        if not request.path_info.startswith(PATH_PREFIX):
            return self.get_response(request)
        return super().__call__(request)

    def process_response(self, request, response):
        response = super().process_response(request, response)
        if self.cookie_name in response.cookies:
            response.cookies[self.cookie_name]["secure"] = True
        return response


@contextmanager
def outstanding_requests(saml_session, provider):
    """djangosaml2 keeps every outstanding AuthnRequest id in one session key; Hearth keeps them per IdP, so that
    an IdP's response can only answer a request sent to that IdP. Within the block, the library's key holds this
    IdP's ids only; after it, what the library left there is this IdP's again."""
    own = f"{OUTSTANDING_KEY}:{provider.pk}"
    saml_session[OUTSTANDING_KEY] = dict(saml_session.get(own) or {})
    try:
        yield
    finally:
        left = list((saml_session.pop(OUTSTANDING_KEY, None) or {}).items())[-MAX_OUTSTANDING:]
        if left:
            saml_session[own] = dict(left)
        else:
            saml_session.pop(own, None)
        saml_session.modified = True


class _ProviderConfig:
    """djangosaml2's SPConfigMixin, resolved from the view's IdP (self.provider) once per request."""

    _sp_config = None
    with_idp = True
    signing = True

    def get_sp_config(self, request):
        if self._sp_config is None:
            self._sp_config = saml_config.sp_config(self.provider, with_idp=self.with_idp, signing=self.signing)
        return self._sp_config


class SamlLoginView(_ProviderConfig, LoginView):
    """GET /sso/saml/<id>/login/?next=: a signed AuthnRequest to the IdP by HTTP-Redirect; its id is kept in the
    SAML session for this IdP."""

    def should_prevent_auth(self, request):
        return False  # a signed-in user may sign in through another tenant's IdP, as with OIDC

    def get(self, request, identity_provider_id):
        try:
            self.provider = routable_provider(identity_provider_id, kind=SAML)
            conf = self.get_sp_config(request)
        except ServiceError as exc:
            return login_failed(request, exc)
        request.GET = request.GET.copy()
        request.GET["idp"] = conf.hearth_idp_entity_id  # the one IdP of the metadata, never a page to choose
        with outstanding_requests(request.saml_session, self.provider):
            return super().get(request)


class SamlAcsView(_ProviderConfig, AssertionConsumerServiceView):
    """POST /sso/saml/<id>/acs/: the IdP's response (HTTP-POST binding). pysaml2 checks it; TenantSamlBackend
    checks the assertion's single use and provisions the member."""

    rejection = None
    signing = False

    def post(self, request, identity_provider_id):
        try:
            self.provider = routable_provider(identity_provider_id, kind=SAML)
            self.get_sp_config(request)
        except ServiceError as exc:
            return login_failed(request, exc)
        if not request.POST.get("SAMLResponse"):
            return login_failed(request, TokenRejected("No SAML response was posted here: start again from the "
                                                       "sign-in page.", code="sso_saml_missing"))
        request.sso_identity_provider = self.provider
        try:
            with outstanding_requests(request.saml_session, self.provider):
                return super().post(request)
        except ServiceError as exc:  # raised by TenantSamlBackend: the reason is its own
            return login_failed(request, exc)

    def custom_validation(self, response):
        """The assertion's issuer (and the response's, which is optional) is the IdP of the configured metadata:
        pysaml2 accepts any IdP the metadata describes."""
        expected = self.get_sp_config(self.request).hearth_idp_entity_id
        assertion_issuer = response.assertion.issuer
        issuers = {(assertion_issuer.text or "").strip() if assertion_issuer is not None else ""}
        if response.response.issuer is not None:
            issuers.add(response.issuer())
        if issuers != {expected}:
            self.rejection = TokenRejected(f"The response was issued by {', '.join(sorted(issuers))}, not by this "
                                           f"identity provider ({expected}).", code="sso_saml_issuer")
            raise self.rejection

    def handle_acs_failure(self, request, exception=None, status=403, **kwargs):
        return login_failed(request, self.rejection or acs_rejection(exception))

    def post_login_hook(self, request, user, session_info):
        sso_login_remember(request, tenant=request.sso_membership.tenant, at=timezone.now())
        choose_tenant(request, request.sso_membership.tenant.slug)


class SamlMetadataView(_ProviderConfig, MetadataView):
    """GET /sso/saml/<id>/metadata/: Hearth's SP metadata for this IdP (entity id, ACS URL, certificate), public so
    that the IdP's administrators can read it before its domains are verified."""

    with_idp = False

    def get(self, request, identity_provider_id):
        self.provider = IdentityProvider.objects.filter(pk=identity_provider_id, kind=SAML).first()
        if self.provider is None:
            raise Http404("No SAML identity provider here.")
        try:
            return super().get(request)
        except ServiceError as exc:
            return login_failed(request, exc)


def acs_rejection(exc):
    """The reason shown for an exception of pysaml2's checks (as djangosaml2's ACS view hands them over)."""
    text = str(exc or "")
    if isinstance(exc, SignatureError) and "missing" in text.lower():
        return TokenRejected("The identity provider's assertion is not signed: Hearth accepts signed assertions only "
                             "(ask your administrator to sign assertions in the IdP).", code="sso_saml_unsigned")
    if isinstance(exc, SignatureError):
        return TokenRejected("The identity provider's response failed its signature check: it was not signed with the "
                             "IdP's key, or was changed after signing.", code="sso_saml_signature")
    if isinstance(exc, UnsolicitedResponse):
        return TokenRejected("This response answers no sign-in started in this browser with this identity provider "
                             "(its InResponseTo is unknown or already used): start again from the sign-in page.",
                             code="sso_saml_unsolicited")
    if isinstance(exc, ResponseLifetimeExceed | ToEarly):
        return TokenRejected("The identity provider's assertion is expired or not yet valid (check the clocks).",
                             code="sso_saml_expired")
    if isinstance(exc, StatusError):
        # pysaml2's text: "Unsuccessful operation: <the Status XML>\n<its StatusMessage> from <its status code>"
        detail = text.split("\n", 1)[-1].rsplit(" from ", 1)[0].strip() or type(exc).__name__
        return Forbidden(f"The identity provider refused the sign-in: {detail}", code="sso_idp_refused")
    if "AudienceRestrictions" in text:
        return TokenRejected("The assertion is meant for another service (its audience is not Hearth's entity id for "
                             "this identity provider).", code="sso_saml_audience")
    if "recipient" in text.lower() or isinstance(exc, SuspiciousOperation):
        return TokenRejected("The response was sent for another address (its destination or recipient is not this "
                             "identity provider's ACS URL at Hearth) or is not valid.", code="sso_saml_destination")
    return TokenRejected(f"The identity provider's response was refused: {text or type(exc).__name__}.")


def assertion_claims(provider, session_info):
    """(subject, claims with Hearth's names) from a checked assertion: the attributes through the IdP's
    attribute_mapping; the address may be the NameID (format emailAddress). The subject is the NameID, or the
    address when the NameID is transient (a new one at each sign-in)."""
    mapping = {**SAML_ATTRIBUTES, **(provider.attribute_mapping or {})}
    attributes = session_info.get("ava") or {}

    def first(name):
        values = attributes.get(mapping[name]) or []
        return str(values[0]).strip() if values else ""

    name_id = session_info.get("name_id")
    name_id_text = (getattr(name_id, "text", "") or "").strip()
    email = first("email")
    if not email and getattr(name_id, "format", None) == NAMEID_FORMAT_EMAILADDRESS:
        email = name_id_text
    subject = email if getattr(name_id, "format", None) == NAMEID_FORMAT_TRANSIENT else name_id_text
    if not subject or len(subject) > 255:
        raise TokenRejected("The assertion has no usable NameID (empty, or longer than 255 characters).",
                            code="sso_saml_subject")
    claims = {"email": email, "email_verified": True,  # the IdP asserts it, signed; its domain is checked still
              "name": first("name"), "given_name": first("given_name"), "family_name": first("family_name"),
              "groups": [str(group) for group in attributes.get(mapping["groups"]) or []]}
    return subject, claims


class TenantSamlBackend(ModelBackend):
    """Authenticates only the ACS of a tenant's SAML identity provider (request.sso_identity_provider), after
    pysaml2 has checked the response."""

    def authenticate(self, request, session_info=None, assertion_info=None, **kwargs):
        provider = getattr(request, "sso_identity_provider", None) if request is not None else None
        if session_info is None or provider is None or provider.kind != SAML:
            return None
        assertion_info = assertion_info or {}
        saml_assertion_use(identity_provider=provider, assertion_id=assertion_info.get("assertion_id"),
                           not_on_or_after=assertion_info.get("not_on_or_after"))
        subject, claims = assertion_claims(provider, session_info)
        membership = sso_login_provision(identity_provider=provider, subject=subject, claims=claims)
        request.sso_membership = membership
        return membership.user
