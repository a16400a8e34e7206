"""Session tokens for the gateway: HS256 JWTs issued by Hearth and verified by HAProxy on every request."""
import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import jwt
from django.conf import settings

from tenants.exceptions import ServiceError

ALGORITHM = "HS256"  # pinned: HAProxy checks the header's alg against this exact value
# Secrets and kids end up as literal strings in haproxy.cfg, so only characters that need no quoting are allowed.
_KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SECRET_RE = re.compile(r"^[A-Za-z0-9_.~+/=-]{32,256}$")
KEYS_FILE_NAME = "jwt_keys"


@dataclass(frozen=True)
class SigningKey:
    kid: str
    secret: str


class TokenInvalid(Exception):
    """The token is not one Hearth would accept (bad signature, expired, wrong audience, ...)."""


def _parse_keys(text: str, *, source: str) -> list[SigningKey]:
    keys = []
    for item in re.split(r"[,\n]", text):
        item = item.strip()
        if not item:
            continue
        kid, sep, secret = item.partition(":")
        if not sep or not _KID_RE.match(kid) or not _SECRET_RE.match(secret):
            raise ServiceError(
                f"{source}: every key must be 'kid:secret' with kid [A-Za-z0-9_-]{{1,32}} "
                "and a secret of 32-256 characters from [A-Za-z0-9_.~+/=-]"
            )
        keys.append(SigningKey(kid, secret))
    if not keys:
        raise ServiceError(f"{source}: no key")
    if len({k.kid for k in keys}) != len(keys):
        raise ServiceError(f"{source}: duplicate kid")
    return keys


def keys_file() -> Path:
    return Path(settings.GATEWAY_RUN_DIR) / KEYS_FILE_NAME


def _write_keys_file(keys: list[SigningKey]) -> None:
    path = keys_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("".join(f"{k.kid}:{k.secret}\n" for k in keys))
    os.replace(tmp, path)


def _new_key() -> SigningKey:
    return SigningKey(f"k{int(time.time())}{secrets.token_hex(2)}", secrets.token_urlsafe(48))


_keys_cache: dict = {}  # source -> (what it was parsed from, keys): every open signs a token


def signing_keys() -> list[SigningKey]:
    """The accepted keys, current first: GATEWAY_JWT_KEYS, else a per-install file generated on first use (dev).

    Parsed once per change: the file is re-read when its inode, size or mtime changes (rotation replaces it).
    """
    if settings.GATEWAY_JWT_KEYS:
        return _cached("env", settings.GATEWAY_JWT_KEYS,
                       lambda: _parse_keys(settings.GATEWAY_JWT_KEYS, source="GATEWAY_JWT_KEYS"))
    path = keys_file()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        _create_keys_file_once(path)
        st = os.stat(path)
    stamp = (str(path), st.st_ino, st.st_size, st.st_mtime_ns)
    return _cached("file", stamp, lambda: _parse_keys(path.read_text(), source=str(path)))


def _cached(source, stamp, parse):
    hit = _keys_cache.get(source)
    if hit is None or hit[0] != stamp:
        hit = _keys_cache[source] = (stamp, parse())
    return list(hit[1])


def _create_keys_file_once(path: Path) -> None:
    """The gateway and the web process may both get here first: link(2) lets exactly one key win."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = _new_key()
    tmp = path.with_name(f"{path.name}.{os.getpid()}.new")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{key.kid}:{key.secret}\n")
    try:
        os.link(tmp, path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)


def keys_rotate(*, keep_previous: int = 1) -> tuple[list[SigningKey], list[SigningKey]]:
    """Generate a new key in the per-install file; returns (accepting, final) key lists.

    Rotation is two-phase so no freshly issued token is ever refused: the gateway first accepts the new key
    (`accepting`: old current still signs), then the new key becomes current (`final`). The caller reloads
    the gateway between the two writes; `gateway_keys_rotate` in `process` does both.
    """
    if settings.GATEWAY_JWT_KEYS:
        raise ServiceError("GATEWAY_JWT_KEYS is set: rotate by changing it (new key first) and reloading")
    current = signing_keys()
    new = _new_key()
    accepting = [current[0], new] + current[1:]
    final = [new] + current[:keep_previous]
    return accepting, final


def keys_write(keys: list[SigningKey]) -> None:
    _write_keys_file(keys)


def session_token_issue(*, tenant_slug, user_id, workspace_host_key, session_id, container_id, ttl=None):
    """Sign the token a browser presents to the gateway for one session; returns (token, expires_at)."""
    key = signing_keys()[0]
    now = int(time.time())
    exp = now + int(ttl if ttl is not None else settings.GATEWAY_TOKEN_TTL)
    claims = {
        "iss": settings.GATEWAY_ISSUER,
        "aud": settings.GATEWAY_AUDIENCE,
        "sub": str(user_id),
        "tenant": str(tenant_slug),
        "workspace": str(workspace_host_key),
        "session": str(session_id),
        "container": str(container_id),
        "iat": now,
        "exp": exp,
        "jti": uuid.uuid4().hex,
    }
    return _hs256(claims, key), datetime.fromtimestamp(exp, tz=UTC)


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


_headers: dict = {}


def _hs256(claims: dict, key: SigningKey) -> str:
    """The JWT PyJWT's jwt.encode(claims, secret, "HS256", headers={"kid": ...}) makes (same header, compact
    JSON), in a quarter of its CPU: one is signed on every open."""
    header = _headers.get(key.kid)
    if header is None:
        header = _headers[key.kid] = _b64(json.dumps({"alg": ALGORITHM, "kid": key.kid, "typ": "JWT"},
                                                     separators=(",", ":"), sort_keys=True).encode())
    signing_input = header + b"." + _b64(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(key.secret.encode(), signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + _b64(signature)).decode()


def session_token_verify(token: str) -> dict:
    """Verify a session token as HAProxy does (kid's key, HS256 only, exp, aud, iss); returns its claims."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise TokenInvalid(str(exc))
    by_kid = {k.kid: k for k in signing_keys()}
    key = by_kid.get(header.get("kid"))
    if key is None:
        raise TokenInvalid("unknown key id")
    try:
        return jwt.decode(
            token,
            key.secret,
            algorithms=[ALGORITHM],
            audience=settings.GATEWAY_AUDIENCE,
            issuer=settings.GATEWAY_ISSUER,
            options={"require": ["exp", "iat", "aud", "iss", "sub", "workspace", "session", "jti"]},
        )
    except jwt.PyJWTError as exc:
        raise TokenInvalid(str(exc))
