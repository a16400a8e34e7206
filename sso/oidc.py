"""OpenID Connect sign-in through mozilla-django-oidc, one tenant's identity provider per request.

The library reads one provider from settings; here its views and backend are subclassed so that the provider is
resolved per request: the start view from the URL (and stores the provider's id with the state, nonce and PKCE
verifier in the session), the callback from the state. The library checks the state, sends the PKCE verifier and
the nonce; the backend checks the ID token against the provider's JWKS (RS256), its issuer, audience (this client),
expiry and nonce, then provisions the member (sso.provisioning).
"""
from urllib.parse import parse_qs, urlparse

import jwt
import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.cache import cache
from django.core.exceptions import SuspiciousOperation
from django.utils import timezone
from django.views.generic import View
from mozilla_django_oidc.auth import OIDCAuthenticationBackend
from mozilla_django_oidc.utils import import_from_settings
from mozilla_django_oidc.views import OIDCAuthenticationCallbackView, OIDCAuthenticationRequestView

from sso import encryption
from sso.models import IdentityProvider
from sso.provisioning import sso_login_provision
from sso.views import TokenRejected, login_failed, routable_provider
from tenants.exceptions import Forbidden, NotFound, ServiceError, Unavailable
from tenants.portal import choose_tenant, sso_login_remember

SIGNING_ALGORITHM = "RS256"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def oidc_configuration(issuer):
    """The provider's discovery document (endpoints, JWKS URI, issuer), cached for SSO_DISCOVERY_CACHE_SECONDS."""
    url = issuer if issuer.endswith(DISCOVERY_PATH) else issuer.rstrip("/") + DISCOVERY_PATH
    key = f"sso:oidc-discovery:{url}"
    document = cache.get(key)
    if document is None:
        try:
            response = requests.get(url, timeout=settings.OIDC_TIMEOUT)
            response.raise_for_status()
            document = response.json()
        except (requests.RequestException, ValueError) as exc:
            raise Unavailable(f"The identity provider at {url} did not answer ({type(exc).__name__}); try again "
                              f"later or ask your administrator.", code="sso_idp_unavailable") from None
        missing = [k for k in ("issuer", "authorization_endpoint", "token_endpoint", "jwks_uri") if not document.get(k)]
        if missing:
            raise Unavailable(f"The identity provider's configuration at {url} lacks {', '.join(missing)}.",
                              code="sso_idp_misconfigured")
        cache.set(key, document, settings.SSO_DISCOVERY_CACHE_SECONDS)
    return document


class OidcLoginStartView(OIDCAuthenticationRequestView):
    """GET /sso/oidc/<id>/start: to the identity provider's authorization endpoint (code flow with PKCE)."""

    def __init__(self, **kwargs):
        View.__init__(self, **kwargs)  # the library's __init__ reads one provider from settings

    def get_settings(self, attr, *args):
        if attr == "OIDC_RP_SCOPES":
            return self.provider.scopes
        return import_from_settings(attr, *args)

    def get_extra_params(self, request):
        hint = request.GET.get("login_hint", "")
        return {"login_hint": hint} if hint else {}

    def get(self, request, identity_provider_id):
        try:
            self.provider = routable_provider(identity_provider_id, kind=IdentityProvider.Kind.OIDC)
            configuration = oidc_configuration(self.provider.issuer)
        except ServiceError as exc:
            return login_failed(request, exc)
        self.OIDC_OP_AUTH_ENDPOINT = configuration["authorization_endpoint"]
        self.OIDC_RP_CLIENT_ID = self.provider.client_id
        response = super().get(request)
        state = parse_qs(urlparse(response.url).query)["state"][0]
        request.session["oidc_states"][state]["identity_provider"] = self.provider.pk
        request.session.modified = True
        return response


class OidcCallbackView(OIDCAuthenticationCallbackView):
    """GET /sso/oidc/callback/: the provider is the one stored with the state; every refusal is a clear page."""

    def get(self, request):
        state = request.GET.get("state", "")
        entry = (request.session.get("oidc_states") or {}).get(state) if state else None
        if not isinstance(entry, dict) or "identity_provider" not in entry:
            return login_failed(request, TokenRejected(
                "This sign-in is not valid (its state is unknown, expired or already used): start again from the "
                "sign-in page.", code="sso_state_invalid"))
        if request.GET.get("error"):
            del request.session["oidc_states"][state]
            request.session.modified = True
            detail = request.GET.get("error_description") or request.GET["error"]
            return login_failed(request, Forbidden(f"The identity provider refused the sign-in: {detail}",
                                                   code="sso_idp_refused"))
        provider = (IdentityProvider.objects.select_related("tenant__plan")
                    .filter(pk=entry["identity_provider"]).first())
        if provider is None:
            return login_failed(request, NotFound("This identity provider no longer exists.", code="sso_idp_gone"))
        request.sso_identity_provider = provider
        try:
            return super().get(request)
        except ServiceError as exc:
            return login_failed(request, exc)
        except SuspiciousOperation as exc:
            return login_failed(request, TokenRejected(f"The identity provider's answer was refused: {exc}"))

    def login_failure(self):
        return login_failed(self.request, TokenRejected("The sign-in through the identity provider failed."))

    def login_success(self):
        response = super().login_success()
        membership = self.request.sso_membership
        sso_login_remember(self.request, tenant=membership.tenant, at=timezone.now())
        choose_tenant(self.request, membership.tenant.slug)
        return response


class TenantOidcBackend(OIDCAuthenticationBackend):
    """Authenticates only the callback of a tenant's identity provider (request.sso_identity_provider)."""

    def __init__(self, *args, **kwargs):
        self.UserModel = get_user_model()  # the library's __init__ reads one provider from settings

    def authenticate(self, request, **kwargs):
        provider = getattr(request, "sso_identity_provider", None) if request is not None else None
        if provider is None or "nonce" not in kwargs:
            return None
        self.provider = provider
        self.configuration = oidc_configuration(provider.issuer)
        self.OIDC_OP_TOKEN_ENDPOINT = self.configuration["token_endpoint"]
        self.OIDC_OP_USER_ENDPOINT = self.configuration.get("userinfo_endpoint")
        self.OIDC_OP_JWKS_ENDPOINT = self.configuration["jwks_uri"]
        self.OIDC_RP_CLIENT_ID = provider.client_id
        self.OIDC_RP_CLIENT_SECRET = encryption.decrypt(provider.client_secret_encrypted)
        self.OIDC_RP_SIGN_ALGO = SIGNING_ALGORITHM
        self.OIDC_RP_IDP_SIGN_KEY = None
        try:
            return super().authenticate(request, **kwargs)
        except requests.HTTPError as exc:
            body = exc.response.text[:300] if exc.response is not None else ""
            raise TokenRejected(f"The identity provider refused the authorization code: {body}",
                                code="sso_code_refused") from None
        except requests.RequestException as exc:
            raise Unavailable(f"The identity provider did not answer ({type(exc).__name__}); try again.",
                              code="sso_idp_unavailable") from None

    def verify_token(self, token, **kwargs):
        """The ID token's claims once its signature (the provider's JWKS, RS256), issuer, audience, expiry and nonce
        are right; else TokenRejected saying which check failed."""
        if not token:
            raise TokenRejected("The identity provider sent no ID token.")
        try:
            if jwt.get_unverified_header(token).get("alg") != SIGNING_ALGORITHM:
                raise TokenRejected(f"The ID token is not signed with {SIGNING_ALGORITHM}.")
            key = self.retrieve_matching_jwk(token)
            payload = jwt.decode(
                token, key, algorithms=[SIGNING_ALGORITHM], audience=self.OIDC_RP_CLIENT_ID,
                issuer=self.configuration["issuer"], leeway=settings.SSO_CLOCK_LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise TokenRejected("The ID token has expired.", code="sso_token_expired") from None
        except jwt.InvalidAudienceError:
            raise TokenRejected("The ID token was issued for another client.", code="sso_token_audience") from None
        except jwt.InvalidIssuerError:
            raise TokenRejected("The ID token was issued by another provider.", code="sso_token_issuer") from None
        except jwt.InvalidTokenError as exc:
            raise TokenRejected(f"The ID token could not be verified: {exc}.") from None
        audiences = payload["aud"] if isinstance(payload["aud"], list) else [payload["aud"]]
        if len(audiences) > 1 and payload.get("azp") != self.OIDC_RP_CLIENT_ID:
            raise TokenRejected("The ID token was issued for another client.", code="sso_token_audience")
        if payload.get("nonce") != kwargs.get("nonce"):
            raise TokenRejected("The ID token's nonce does not match this sign-in.", code="sso_nonce_mismatch")
        return payload

    def get_or_create_user(self, access_token, id_token, payload):
        claims = dict(payload)
        if self.OIDC_OP_USER_ENDPOINT:
            userinfo = self.get_userinfo(access_token, id_token, payload)
            if userinfo.get("sub") != payload["sub"]:
                raise TokenRejected("The identity provider's user info is about another subject.")
            claims.update(userinfo)
        membership = sso_login_provision(identity_provider=self.provider, subject=payload["sub"], claims=claims)
        self.request.sso_membership = membership
        return membership.user

    def get_user(self, user_id):
        return ModelBackend.get_user(self, user_id)  # an inactive user's session ends, as with a password
