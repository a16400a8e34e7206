"""Session tokens, keys and the rendered configuration, without a running HAProxy."""
import base64
import json
import time

import jwt
import pytest

from tenants.exceptions import ServiceError
from workspaces.gateway import tokens
from workspaces.gateway.config import config_render, gateway_config, pages_render
from workspaces.gateway.urls import workspace_url

KEYS = "new:" + "n" * 40 + ",old:" + "o" * 40


@pytest.fixture(autouse=True)
def _run_dir(settings, tmp_path):
    settings.GATEWAY_RUN_DIR = tmp_path / "gw"
    settings.GATEWAY_JWT_KEYS = ""


def issue(**kw):
    args = dict(tenant_slug="acme", user_id=3, workspace_host_key="ws-1", session_id="s-1", container_id=9)
    args.update(kw)
    return tokens.session_token_issue(**args)


def test_issued_token_carries_every_claim_and_the_kid(settings):
    settings.GATEWAY_JWT_KEYS = KEYS
    token, expires_at = issue(ttl=120)
    header = jwt.get_unverified_header(token)
    assert header == {"alg": "HS256", "kid": "new", "typ": "JWT"}
    claims = tokens.session_token_verify(token)
    assert {k: claims[k] for k in ("iss", "aud", "sub", "tenant", "workspace", "session", "container")} == {
        "iss": "hearth", "aud": settings.GATEWAY_AUDIENCE, "sub": "3", "tenant": "acme", "workspace": "ws-1",
        "session": "s-1", "container": "9"}
    assert claims["exp"] - claims["iat"] == 120
    assert abs(expires_at.timestamp() - claims["exp"]) < 1
    assert len(claims["jti"]) == 32
    assert issue()[0] != token  # a fresh jti every time


def test_previous_key_still_verifies(settings):
    settings.GATEWAY_JWT_KEYS = "old:" + "o" * 40
    token, _ = issue()
    settings.GATEWAY_JWT_KEYS = KEYS
    assert tokens.session_token_verify(token)["session"] == "s-1"


@pytest.mark.parametrize("mutate", ["other key", "alg none", "expired", "audience", "issuer", "unknown kid",
                                    "HS512", "garbage"])
def test_verify_refuses(settings, mutate):
    settings.GATEWAY_JWT_KEYS = KEYS
    now = int(time.time())
    claims = {"iss": "hearth", "aud": settings.GATEWAY_AUDIENCE, "sub": "1", "workspace": "w", "session": "s",
              "jti": "j", "iat": now, "exp": now + 60}
    key, alg, kid = "n" * 40, "HS256", "new"
    if mutate == "other key":
        key = "x" * 40
    elif mutate == "expired":
        claims["exp"] = now - 1
    elif mutate == "audience":
        claims["aud"] = "other"
    elif mutate == "issuer":
        claims["iss"] = "other"
    elif mutate == "unknown kid":
        kid = "nobody"
    elif mutate == "HS512":
        alg = "HS512"
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid})
    if mutate == "alg none":
        b64 = lambda o: base64.urlsafe_b64encode(json.dumps(o).encode()).rstrip(b"=").decode()  # noqa: E731
        token = f"{b64({'alg': 'none', 'kid': 'new'})}.{b64(claims)}."
    if mutate == "garbage":
        token = "abc"
    with pytest.raises(tokens.TokenInvalid):
        tokens.session_token_verify(token)


@pytest.mark.parametrize("bad", ["nokid", "k:short", "k 1:" + "a" * 40, "k:" + "a" * 39 + "'",
                                 "k:" + "a" * 40 + ",k:" + "b" * 40, ""])
def test_bad_key_settings_are_refused(settings, bad):
    settings.GATEWAY_JWT_KEYS = bad or " , "
    with pytest.raises(ServiceError):
        tokens.signing_keys()


def test_without_settings_a_per_install_key_is_generated_once_under_the_run_dir(settings):
    keys = tokens.signing_keys()
    assert len(keys) == 1 and len(keys[0].secret) >= 32
    path = settings.GATEWAY_RUN_DIR / "jwt_keys"
    assert oct(path.stat().st_mode)[-3:] == "600"
    assert tokens.signing_keys() == keys


def test_rotation_accepts_the_new_key_before_signing_with_it():
    first = tokens.signing_keys()[0]
    accepting, final = tokens.keys_rotate()
    assert accepting[0] == first and len(accepting) == 2
    new = accepting[1]
    assert final == [new, first]
    tokens.keys_write(final)
    assert jwt.get_unverified_header(issue()[0])["kid"] == new.kid


def test_rotation_is_refused_when_keys_come_from_the_environment(settings):
    settings.GATEWAY_JWT_KEYS = KEYS
    with pytest.raises(ServiceError):
        tokens.keys_rotate()


def test_workspace_url(settings):
    settings.GATEWAY_HOST, settings.GATEWAY_SCHEME, settings.HEARTH_GATEWAY_PORT = "localhost", "http", 8001
    assert workspace_url(host_key="ws-1", token="a.b.c") == "http://ws-1.localhost:8001/__hearth/open?token=a.b.c"
    settings.GATEWAY_HOST, settings.GATEWAY_SCHEME, settings.HEARTH_GATEWAY_PORT = "ws.example.com", "https", 443
    assert workspace_url(host_key="ws-1", token="t") == "https://ws-1.ws.example.com/__hearth/open?token=t"


def test_rendered_config_holds_every_accepted_key_and_is_private(settings):
    settings.GATEWAY_JWT_KEYS = KEYS
    cfg = gateway_config(port=18001)
    path = config_render(cfg, routes=[("ws-1", "s-1", "10.0.0.2:8080"), ("ws-2", "s-2", None)])
    text = path.read_text()
    assert "jwt_verify(HS256,'" + "n" * 40 + "') if !token_cached { var(txn.kid) -m str new }" in text
    assert "jwt_verify(HS256,'" + "o" * 40 + "') if !token_cached { var(txn.kid) -m str old }" in text
    uncached = config_render(gateway_config(port=18001, token_cache=False)).read_text()
    assert "jwt_verify(HS256,'" + "n" * 40 + "') if { var(txn.kid) -m str new }" in uncached
    assert "token_cached" not in uncached
    assert oct(path.stat().st_mode)[-3:] == "600"
    assert cfg.routes_map.read_text() == "ws-1 s-1@10.0.0.2:8080\nws-2 s-2@-\n"
    assert "; Secure" not in text
    secure = config_render(gateway_config(port=18001, scheme="https")).read_text()
    assert '"__Host-hearth_gw=%[var(txn.jwt)]; Path=/; HttpOnly; SameSite=Lax; Secure"' in secure
    assert "req.cook(__Host-hearth_gw)" in secure


def test_error_files_are_complete_http_responses(settings):
    paths = pages_render(gateway_config(port=18001))
    raw = paths["gone_http"].read_bytes()
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.0 503 ")
    assert f"Content-Length: {len(body)}".encode() in head
    assert b"Content-Type: text/html; charset=utf-8" in head
    assert body.startswith(b"<!DOCTYPE html>") and body.rstrip().endswith(b"</html>")


def test_the_hand_signed_token_is_byte_for_byte_what_pyjwt_makes():
    """tokens._hs256 replaces jwt.encode on the open's hot path; it must not differ by a byte."""
    key = tokens.signing_keys()[0]
    claims = {"iss": "hearth", "aud": "hearth-gateway", "workspace": "ws-x", "session": "s-1", "tenant": "acme",
              "sub": "7", "container": 3, "iat": 1700000000, "exp": 1700000600, "jti": "ab" * 16}
    assert tokens._hs256(claims, key) == jwt.encode(claims, key.secret, algorithm="HS256",
                                                    headers={"kid": key.kid})
