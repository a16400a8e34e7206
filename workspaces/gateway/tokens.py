"""Session tokens for the gateway: HS256 JWTs issued by Hearth and verified by HAProxy on every request."""
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


def signing_keys() -> list[SigningKey]:
    """The accepted keys, current first: GATEWAY_JWT_KEYS, else a per-install file generated on first use (dev)."""
    if settings.GATEWAY_JWT_KEYS:
        return _parse_keys(settings.GATEWAY_JWT_KEYS, source="GATEWAY_JWT_KEYS")
    path = keys_file()
    if not path.exists():
        _create_keys_file_once(path)
    return _parse_keys(path.read_text(), source=str(path))


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
    token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
    return token, datetime.fromtimestamp(exp, tz=UTC)


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
