"""Secrets stored encrypted (an IdP's client secret): Fernet with keys from SSO_ENCRYPTION_KEYS, or one derived from
SECRET_KEY. The first key encrypts; every key decrypts, so a key is rotated by putting the new one first."""
import base64
import hashlib
from functools import cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from django.conf import settings


@cache
def _fernet(keys):
    if not keys:
        derived = hashlib.sha256(f"hearth-sso-secrets:{settings.SECRET_KEY}".encode()).digest()
        keys = (base64.urlsafe_b64encode(derived).decode(),)
    return MultiFernet([Fernet(key) for key in keys])


def encrypt(plaintext):
    return _fernet(tuple(settings.SSO_ENCRYPTION_KEYS)).encrypt(plaintext.encode()).decode() if plaintext else ""


def decrypt(token):
    """The plaintext, or "" when none is stored; ValueError when no key opens it (the keys were changed)."""
    if not token:
        return ""
    try:
        return _fernet(tuple(settings.SSO_ENCRYPTION_KEYS)).decrypt(token.encode()).decode()
    except InvalidToken:
        raise ValueError("The stored secret cannot be decrypted with SSO_ENCRYPTION_KEYS: enter it again.") from None
