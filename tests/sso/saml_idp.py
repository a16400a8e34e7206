"""A SAML identity provider for the tests: pysaml2's Server signing real assertions (xmlsec1), served over HTTP by a
thread (http.server). Its key and certificate are made at start with `cryptography`, in a temporary directory.

GET /sso/redirect?SAMLRequest=…&RelayState=… (the HTTP-Redirect binding) answers a login page; POSTing it
(`login` = an address of ACCOUNTS or any) answers the auto-posting HTML form that carries the signed Response to the
SP's ACS (the HTTP-POST binding). The form's other fields make a wrong IdP on purpose, for the refusal tests:
`unsigned=1` (with `sign_response=1`: only the response is signed), `audience=…`, `in_response_to=…`,
`destination=…`, `refuse=<message>` (an error status, as an IdP answers a user it denies). `encrypt=1` encrypts
the signed assertion with the SP's certificate from its metadata, as IdPs configured to encrypt do.
"""
import html
import re
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import saml2
import saml2.samlp
from saml2.config import IdPConfig
from saml2.metadata import entity_descriptor
from saml2.saml import NAMEID_FORMAT_PERSISTENT, NameID
from saml2.server import Server

from sso.saml_config import sp_keypair_generate

LOGIN_PAGE = """<!doctype html><html><head><title>Test IdP</title></head><body><h1>Test IdP sign-in</h1>
<form method="post" action="/sso/login">
<input type="hidden" name="SAMLRequest" value="{request}"><input type="hidden" name="RelayState" value="{relay}">
<label>User <input name="login" autofocus></label><label>Password <input name="password" type="password"></label>
<button type="submit">Sign in</button></form></body></html>"""


class SamlIdp:
    """A running test IdP: its base URL, metadata (for Hearth's `metadata_xml`) and accounts."""

    def __init__(self, *, accounts=None, sso_url=None):
        """`sso_url`: the single sign-on URL it calls its own (another IdP's, to answer requests sent there)."""
        self.accounts = accounts or {}
        self._dir = tempfile.TemporaryDirectory(prefix="hearth-test-idp-")
        key_pem, cert_pem = sp_keypair_generate("Hearth test IdP")
        key_file, cert_file = Path(self._dir.name) / "idp.key", Path(self._dir.name) / "idp.crt"
        key_file.write_text(key_pem)
        cert_file.write_text(cert_pem)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.idp = self
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.entity_id = f"{self.url}/metadata"
        config = IdPConfig()
        config.load({
            "entityid": self.entity_id,
            "key_file": str(key_file), "cert_file": str(cert_file),
            "service": {"idp": {
                "name": "Hearth test IdP",
                "endpoints": {"single_sign_on_service": [(sso_url or f"{self.url}/sso/redirect",
                                                          saml2.BINDING_HTTP_REDIRECT)]},
                "name_id_format": [NAMEID_FORMAT_PERSISTENT],
                "policy": {"default": {"lifetime": {"minutes": 5}, "attribute_restrictions": None}},
            }},
            "metadata": {},
        })
        self.server = Server(config=config)
        self.metadata_xml = str(entity_descriptor(config))
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def trust(self, sp_metadata_xml):
        """Register a service provider by its metadata (Hearth's /sso/saml/<id>/metadata/)."""
        with self.lock:
            self.server.metadata.load("inline", sp_metadata_xml)

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self._dir.cleanup()

    def answer(self, saml_request, relay_state, form):
        """The auto-posting form carrying the signed Response to the SAMLRequest, for the user `form["login"]`."""
        with self.lock:
            request = self.server.parse_authn_request(saml_request, saml2.BINDING_HTTP_REDIRECT).message
            args = self.server.response_args(request, [saml2.BINDING_HTTP_POST])
            email = form["login"]
            account = self.accounts.get(email, {})
            identity = {"email": [email], **{k: v if isinstance(v, list) else [v] for k, v in account.items()}}
            args["in_response_to"] = form.get("in_response_to") or args["in_response_to"]
            args["destination"] = form.get("destination") or args["destination"]
            args["sp_entity_id"] = form.get("audience") or args["sp_entity_id"]
            if form.get("refuse"):
                response = self.server.create_error_response(
                    args["in_response_to"], args["destination"], (saml2.samlp.STATUS_REQUEST_DENIED, form["refuse"]))
            else:
                response = self.server.create_authn_response(
                    identity, userid=email, name_id=NameID(format=NAMEID_FORMAT_PERSISTENT, text=f"id-{email}"),
                    authn={"class_ref": saml2.saml.AUTHN_PASSWORD, "authn_auth": self.url},
                    sign_assertion=form.get("unsigned") != "1", sign_response=form.get("sign_response") == "1",
                    **self._encryption(request.issuer.text, form.get("encrypt") == "1"), **args)
            http_args = self.server.apply_binding(saml2.BINDING_HTTP_POST, str(response), args["destination"],
                                                  relay_state, response=True)
        return http_args["data"]


    def _encryption(self, sp_entity_id, wanted):
        if not wanted:
            return {}
        certificate = self.server.metadata.certs(sp_entity_id, "spsso", use="encryption")[0][1]
        return {"encrypt_assertion": True, "encrypt_cert_assertion": certificate}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _send(self, status, body, content_type="text/html; charset=utf-8"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802 (http.server's name)
        url = urlparse(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if url.path == "/metadata":
            return self._send(200, self.server.idp.metadata_xml, "application/samlmetadata+xml")
        if url.path == "/not-metadata":  # a URL that answers, but not with metadata
            return self._send(200, "<html><body>Welcome to our IdP</body></html>")
        if url.path != "/sso/redirect" or "SAMLRequest" not in query:
            return self._send(404, "not found")
        return self._send(200, LOGIN_PAGE.format(request=html.escape(query["SAMLRequest"]),
                                                 relay=html.escape(query.get("RelayState", ""))))

    def do_POST(self):  # noqa: N802
        length = int(self.headers.get("Content-Length") or 0)
        form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
        if urlparse(self.path).path != "/sso/login":
            return self._send(404, "not found")
        try:
            return self._send(200, self.server.idp.answer(form["SAMLRequest"], form.get("RelayState", ""), form))
        except Exception as exc:  # the test reads the IdP's reason in the page
            return self._send(400, f"IdP error: {type(exc).__name__}: {exc}")


def posted_form(page):
    """(action, fields) of the auto-posting form the IdP answered."""
    action = html.unescape(re.search(r'<form[^>]*action="([^"]+)"', page).group(1))
    fields = {html.unescape(name): html.unescape(value) for name, value in
              re.findall(r'<input[^>]*name="([^"]+)"[^>]*value="([^"]*)"', page)}
    return action, fields
