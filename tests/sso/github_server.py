"""A small GitHub OAuth2 server for the social sign-in tests, over real HTTP on loopback: the authorize page (it
signs in whoever the test chose and redirects back at once), the token exchange, `/user` and `/user/emails`, laid
out as GitHub Enterprise Server is (`<url>/login/oauth/…`, `<url>/api/v3/…`), which is what allauth's
`GITHUB_URL` setting points at."""
import json
import secrets
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse


class GitHubServer:
    def __init__(self, *, client_id, client_secret):
        self.client_id = client_id
        self.client_secret = client_secret
        self.accounts = {}  # login → {"id", "name", "email", "emails": [{"email", "verified", "primary"}]}
        self.signing_in = None  # the login the authorize page signs in
        self.codes = {}  # code → (login, redirect_uri)
        self.tokens = {}  # access token → login
        self.requests = []  # (method, path) seen
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add_account(self, login, *, uid, emails, name=""):
        """`emails`: [(address, verified)], the first one primary."""
        self.accounts[login] = {"id": uid, "login": login, "name": name or login, "email": emails[0][0] if emails
                                else None, "emails": [{"email": email, "verified": verified, "primary": i == 0,
                                                       "visibility": "public"} for i, (email, verified) in
                                                      enumerate(emails)]}

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        github = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _json(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                url = urlparse(self.path)
                github.requests.append(("GET", url.path))
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                if url.path == "/login/oauth/authorize":
                    if query.get("client_id") != github.client_id or github.signing_in is None:
                        return self._json(400, {"error": "unknown client or nobody signing in"})
                    code = secrets.token_urlsafe(16)
                    github.codes[code] = (github.signing_in, query.get("redirect_uri"))
                    self.send_response(302)
                    self.send_header("Location", f"{query['redirect_uri']}?"
                                                 f"{urlencode({'code': code, 'state': query.get('state', '')})}")
                    self.end_headers()
                    return None
                auth = self.headers.get("Authorization", "")
                login = github.tokens.get(auth.removeprefix("token ").strip())
                if login is None:
                    return self._json(401, {"message": "Bad credentials"})
                account = github.accounts[login]
                if url.path == "/api/v3/user":
                    return self._json(200, {k: v for k, v in account.items() if k != "emails"})
                if url.path == "/api/v3/user/emails":
                    return self._json(200, account["emails"])
                return self._json(404, {"message": "Not Found"})

            def do_POST(self):
                url = urlparse(self.path)
                github.requests.append(("POST", url.path))
                length = int(self.headers.get("Content-Length") or 0)
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                if url.path != "/login/oauth/access_token":
                    return self._json(404, {"message": "Not Found"})
                if (form.get("client_id"), form.get("client_secret")) != (github.client_id, github.client_secret):
                    return self._json(200, {"error": "incorrect_client_credentials"})
                login, redirect_uri = github.codes.pop(form.get("code", ""), (None, None))
                if login is None or form.get("redirect_uri") != redirect_uri:
                    return self._json(200, {"error": "bad_verification_code"})
                token = secrets.token_urlsafe(20)
                github.tokens[token] = login
                return self._json(200, {"access_token": token, "token_type": "bearer", "scope": "read:user,user:email"})

        return Handler
