"""Real servers for the SSO tests: the OpenID provider (npm oidc-provider on Node, tests/sso/idp/server.mjs) and a
DNS server on loopback answering TXT queries (dnspython's message API over UDP)."""
import json
import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from urllib.parse import urljoin

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import jwt
import requests
from cryptography.hazmat.primitives.asymmetric import rsa

IDP_DIR = Path(__file__).parent / "idp"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rsa_jwk(kid):
    """(private key, private JWK) for RS256."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, alg="RS256", use="sig")
    return key, jwk


class OidcProvider:
    """A running oidc-provider: its issuer, clients and signing key (the tests mint tokens with it too)."""

    def __init__(self, *, clients, accounts=None):
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}"
        self.key, jwk = rsa_jwk("test-key-1")
        self.kid = jwk["kid"]
        self.clients = clients
        config = {"port": self.port, "issuer": self.issuer, "jwks": {"keys": [jwk]}, "accounts": accounts or {},
                  "clients": [{"grant_types": ["authorization_code"], "response_types": ["code"],
                               "token_endpoint_auth_method": "client_secret_post", **client} for client in clients]}
        self.process = subprocess.Popen(["node", "server.mjs"], cwd=IDP_DIR, text=True, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, env={**os.environ, "IDP_CONFIG": json.dumps(config)})
        self.output = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            self.output.append(line)
            if line.startswith("ready"):
                threading.Thread(target=self._drain, daemon=True).start()
                return
        self.stop()
        raise RuntimeError(f"oidc-provider did not start: {''.join(self.output)[-2000:]}")

    def _drain(self):
        for line in self.process.stdout:
            self.output.append(line)

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def sign_in(self, authorize_url, *, login):
        """Go through the provider's login page as `login`; returns the URL it redirects the browser back to."""
        browser = requests.Session()
        response = browser.get(authorize_url, timeout=10)
        response.raise_for_status()
        action = re.search(r'<form[^>]*action="([^"]+)"', response.text).group(1)
        response = browser.post(urljoin(response.url, action), data={"prompt": "login", "login": login,
                                                                      "password": "any"},
                                allow_redirects=False, timeout=10)
        for _ in range(10):  # the provider's own redirects (login → authorization), up to the one back to Hearth
            location = urljoin(self.issuer, response.headers.get("Location", ""))
            if response.status_code not in (302, 303) or not location.startswith(self.issuer):
                break
            response = browser.get(location, allow_redirects=False, timeout=10)
        assert response.status_code in (302, 303), response.text[:500]
        return response.headers["Location"]

    def id_token(self, **claims):
        """An ID token signed with the provider's own key (as the provider would sign it), with `claims`."""
        now = int(time.time())
        payload = {"iss": self.issuer, "sub": "someone", "aud": self.clients[0]["client_id"], "iat": now,
                   "exp": now + 300, **claims}
        return jwt.encode(payload, self.key, algorithm="RS256", headers={"kid": self.kid})


class DnsServer:
    """Answers TXT queries for `records` ({name: [text, ...]}); NXDOMAIN for other names."""

    def __init__(self):
        self.records = {}
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        while True:
            try:
                data, address = self.sock.recvfrom(4096)
            except OSError:
                return
            query = dns.message.from_wire(data)
            question = query.question[0]
            name = question.name.to_text().rstrip(".").lower()
            self.queries.append(name)
            response = dns.message.make_response(query)
            response.flags |= dns.flags.AA
            if name not in self.records:
                response.set_rcode(dns.rcode.NXDOMAIN)
            elif question.rdtype == dns.rdatatype.TXT:
                texts = [f'"{text}"' for text in self.records[name]]
                if texts:
                    response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "TXT", *texts))
            self.sock.sendto(response.to_wire(), address)

    def stop(self):
        self.sock.close()
