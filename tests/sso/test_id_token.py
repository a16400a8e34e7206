"""The ID token checks of sso.oidc.TenantOidcBackend, with tokens signed by the provider's own key and the JWKS
read over HTTP from the running provider: the provider's real tokens pass the same code in test_login_oidc.py;
here are the ones it would never issue to this client."""
import time

import pytest

from sso.oidc import TenantOidcBackend, TokenRejected, oidc_configuration
from tests.sso.conftest import oidc_provider_for
from tests.sso.support import rsa_jwk

pytestmark = pytest.mark.django_db


@pytest.fixture
def backend(acme, oidc_idp, rf):
    tenant, *_ = acme
    provider = oidc_provider_for(tenant, oidc_idp)
    backend = TenantOidcBackend()
    backend.provider, backend.configuration = provider, oidc_configuration(provider.issuer)
    backend.OIDC_OP_JWKS_ENDPOINT = backend.configuration["jwks_uri"]
    backend.OIDC_RP_CLIENT_ID, backend.OIDC_RP_SIGN_ALGO = provider.client_id, "RS256"
    return backend


def test_a_token_for_this_client_passes(backend, oidc_idp):
    claims = backend.verify_token(oidc_idp.id_token(nonce="n1"), nonce="n1")
    assert claims["aud"] == "hearth-acme"


@pytest.mark.parametrize("claims, code", [
    ({"aud": "hearth-globex"}, "sso_token_audience"),
    ({"aud": ["hearth-acme", "hearth-globex"], "azp": "hearth-globex"}, "sso_token_audience"),
    ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "sso_token_expired"),
    ({"iss": "http://127.0.0.1:1"}, "sso_token_issuer"),
    ({"nonce": "another"}, "sso_nonce_mismatch"),
], ids=["another-client", "another-authorized-party", "expired", "another-issuer", "wrong-nonce"])
def test_tokens_the_client_must_refuse(backend, oidc_idp, claims, code):
    token = oidc_idp.id_token(**{"nonce": "n1", **claims})
    with pytest.raises(TokenRejected) as refused:
        backend.verify_token(token, nonce="n1")
    assert refused.value.code == code


def test_a_token_signed_by_another_key_is_refused(backend, oidc_idp):
    import jwt

    key, _ = rsa_jwk(oidc_idp.kid)  # same key id, not the provider's key
    now = int(time.time())
    token = jwt.encode({"iss": oidc_idp.issuer, "aud": "hearth-acme", "sub": "x", "iat": now, "exp": now + 60,
                        "nonce": "n1"}, key, algorithm="RS256", headers={"kid": oidc_idp.kid})
    with pytest.raises(TokenRejected, match="could not be verified"):
        backend.verify_token(token, nonce="n1")


def test_an_hs256_token_is_refused(backend, oidc_idp):
    import jwt

    token = jwt.encode({"iss": oidc_idp.issuer, "aud": "hearth-acme", "sub": "x", "nonce": "n1"}, "acme-secret",
                       algorithm="HS256")
    with pytest.raises(TokenRejected, match="RS256"):
        backend.verify_token(token, nonce="n1")
