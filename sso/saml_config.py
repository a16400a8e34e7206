"""The SAML service provider (SP) Hearth is for one identity provider: pysaml2's SPConfig, built per request for
djangosaml2's views from the IdentityProvider row — Hearth's entity id, ACS URL and key pair for that IdP, and the
IdP's metadata (its pasted XML, or fetched from its URL and cached) — and the checks of that metadata.

Each SAML IdP has its own SP key pair, generated when the IdP is created (sso.services): the certificate is stored
in clear (it is published in Hearth's SP metadata), the private key encrypted with sso.encryption. xmlsec1 reads
keys from files only, so they are written, mode 0600, in a private directory of this process.
"""
import atexit
import datetime
import hashlib
import shutil
import tempfile
import threading
from functools import cache
from pathlib import Path

import requests
import saml2
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.core.cache import cache as django_cache
from django.urls import reverse
from saml2.config import SPConfig
from saml2.mdstore import InMemoryMetaData
from saml2.sigver import get_xmlsec_binary

from sso import encryption
from tenants.exceptions import ServiceError, Unavailable

SP_KEY_BITS = 2048
SP_CERT_DAYS = 3650
# One IdP's metadata is a few kilobytes; a federation's aggregate (megabytes) is not what metadata_url is for.
METADATA_MAX_BYTES = 1_000_000


# --- Hearth's key pair as the SP of one IdP --------------------------------------------------------------------------


def sp_keypair_generate(common_name):
    """(private key PEM, self-signed certificate PEM) for signing AuthnRequests and decrypting assertions."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=SP_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=SP_CERT_DAYS))
                   .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM).decode()


@cache
def _key_dir():
    path = Path(tempfile.mkdtemp(prefix="hearth-saml-keys-"))  # mode 0700
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _key_files(provider):
    """(key file, certificate file) of the provider's SP key pair, written once per process and certificate."""
    if not (provider.sp_certificate and provider.sp_private_key_encrypted):
        raise ServiceError("This SAML identity provider has no service-provider key pair: save it again.",
                           code="sso_idp_misconfigured")
    stem = _key_dir() / f"{provider.pk}-{hashlib.sha256(provider.sp_certificate.encode()).hexdigest()[:16]}"
    key_file, cert_file = stem.with_suffix(".key"), stem.with_suffix(".crt")
    if not key_file.exists():
        cert_file.write_text(provider.sp_certificate)
        partial = stem.with_suffix(f".{threading.get_ident()}.tmp")  # threads of a process may write at once
        partial.touch(mode=0o600)
        partial.write_text(encryption.decrypt(provider.sp_private_key_encrypted))
        partial.replace(key_file)
    return str(key_file), str(cert_file)


# --- URLs ------------------------------------------------------------------------------------------------------------


def _absolute(path):
    return f"{settings.HEARTH_BASE_URL.rstrip('/')}{path}"


def sp_entity_id(provider):
    """Hearth's entity id for this IdP: the URL of its SP metadata (stable, one per IdP)."""
    return _absolute(reverse("sso:saml-metadata", args=[provider.pk]))


def sp_acs_url(provider):
    return _absolute(reverse("sso:saml-acs", args=[provider.pk]))


# --- the IdP's metadata ----------------------------------------------------------------------------------------------


def metadata_check(xml, *, entity_id=""):
    """The entity id of the IdP that `xml` describes (the one named `entity_id` if given); ServiceError(field=
    "metadata_xml") when it is not SAML metadata, describes no (or several, unnamed) IdPs, or lacks an HTTP-Redirect
    single sign-on service or a signing certificate."""
    metadata = InMemoryMetaData(None, metadata=xml)
    try:
        metadata.load()
    except Exception as exc:  # pysaml2 raises many kinds (XML parse errors, schema errors, validity)
        raise ServiceError(f"The IdP metadata is not valid SAML metadata: {exc or type(exc).__name__}.",
                           field="metadata_xml") from None
    idps = sorted(eid for eid, entity in metadata.items() if entity.get("idpsso_descriptor"))
    if entity_id and entity_id not in idps:
        raise ServiceError(f"The IdP metadata does not describe the identity provider '{entity_id}' (it holds: "
                           f"{', '.join(idps) or 'none'}).", field="entity_id")
    if not idps:
        raise ServiceError("The IdP metadata describes no identity provider (no IDPSSODescriptor).",
                           field="metadata_xml")
    if not entity_id:
        if len(idps) > 1:
            raise ServiceError(f"The IdP metadata describes {len(idps)} identity providers: give the entity_id of "
                               f"yours.", field="entity_id")
        entity_id = idps[0]
    if not metadata.service(entity_id, "idpsso_descriptor", "single_sign_on_service", saml2.BINDING_HTTP_REDIRECT):
        raise ServiceError("The IdP metadata has no single sign-on service with the HTTP-Redirect binding.",
                           field="metadata_xml")
    if not metadata.certs(entity_id, "idpsso", use="signing"):
        raise ServiceError("The IdP metadata has no signing certificate: Hearth accepts signed assertions only.",
                           field="metadata_xml")
    return entity_id


def idp_metadata(provider):
    """(metadata XML, IdP entity id): the pasted XML, or the document at metadata_url, fetched and checked at most
    every SSO_SAML_METADATA_CACHE_SECONDS, or after the IdP is saved (e.g. when its certificate was rotated).
    Unavailable when the URL does not answer or answers something else."""
    if provider.metadata_xml:
        return provider.metadata_xml, provider.entity_id or metadata_check(provider.metadata_xml)
    url = provider.metadata_url
    saved = provider.updated_at.isoformat() if provider.updated_at else ""
    source = f"{provider.pk} {saved} {url} {provider.entity_id}"
    key = f"sso:saml-metadata:{hashlib.sha256(source.encode()).hexdigest()}"
    cached = django_cache.get(key)
    if cached is not None:
        return cached
    try:
        with requests.get(url, timeout=settings.OIDC_TIMEOUT, stream=True) as response:
            response.raise_for_status()
            body = response.raw.read(METADATA_MAX_BYTES + 1, decode_content=True)
    except requests.RequestException as exc:
        raise Unavailable(f"The identity provider's metadata at {url} could not be read ({type(exc).__name__}); "
                          f"try again later or ask your administrator.", code="sso_idp_unavailable") from None
    if len(body) > METADATA_MAX_BYTES:
        raise Unavailable(f"The identity provider's metadata at {url} is larger than {METADATA_MAX_BYTES} bytes: "
                          f"give the metadata of your IdP alone.", code="sso_idp_misconfigured")
    xml = body.decode("utf-8", errors="replace")
    try:
        entity_id = metadata_check(xml, entity_id=provider.entity_id)
    except ServiceError as exc:
        raise Unavailable(f"The identity provider's metadata at {url} cannot be used: {exc.message}",
                          code="sso_idp_misconfigured") from None
    django_cache.set(key, (xml, entity_id), settings.SSO_SAML_METADATA_CACHE_SECONDS)
    return xml, entity_id


# --- pysaml2's configuration -----------------------------------------------------------------------------------------


@cache
def _xmlsec_binary():
    return settings.SSO_SAML_XMLSEC_BINARY or get_xmlsec_binary(["/usr/bin", "/usr/local/bin"])


def sp_config(provider, *, with_idp=True, signing=True):
    """pysaml2's SPConfig of Hearth as the SP of `provider`. Without the IdP (`with_idp=False`) for Hearth's own
    metadata, which must be published before the IdP is configured. Without the signing key (`signing=False`) for
    the ACS, which signs nothing: pysaml2 loads (and checks) that RSA key each time it builds a security context,
    about a tenth of a second here, twice a request; decrypting an encrypted assertion uses the same key as a file
    given to xmlsec1."""
    key_file, cert_file = _key_files(provider)
    acs = sp_acs_url(provider)
    config = {
        "entityid": sp_entity_id(provider),
        "xmlsec_binary": _xmlsec_binary(),
        **({"key_file": key_file, "cert_file": cert_file} if signing else {}),
        "encryption_keypairs": [{"key_file": key_file, "cert_file": cert_file}],
        "allow_unknown_attributes": True,
        "accepted_time_diff": settings.SSO_CLOCK_LEEWAY,
        "service": {"sp": {
            "name": "Hearth",
            "endpoints": {"assertion_consumer_service": [(acs, saml2.BINDING_HTTP_POST)]},
            # Every response answers an AuthnRequest of this browser session to this IdP (its InResponseTo).
            "allow_unsolicited": False,
            "authn_requests_signed": True,
            "signing_algorithm": saml2.xmldsig.SIG_RSA_SHA256,
            "digest_algorithm": saml2.xmldsig.DIGEST_SHA256,
            "want_assertions_signed": True,
            "want_response_signed": False,
            "only_use_keys_in_metadata": True,
            "name_id_format": saml2.saml.NAMEID_FORMAT_UNSPECIFIED,
        }},
    }
    entity_id = None
    if with_idp:
        xml, entity_id = idp_metadata(provider)
        config["metadata"] = {"inline": [xml]}
    conf = SPConfig()
    conf.load(config)
    conf.hearth_idp_entity_id = entity_id  # the one IdP of the metadata whose assertions are accepted
    return conf
