"""A Stripe-shaped billing provider on loopback for the outbox tests and bench: real HTTP, with faults on demand.

It answers `POST /v1/billing/meter_events` as Stripe does in the parts Hearth relies on: an Idempotency-Key it
has seen replays the first answer, and an identifier it holds is refused (400, `duplicate_meter_event`). The test
can make it answer 503, refuse connections (the listener is closed), hold a request unanswered (to kill the
worker that sent it), or answer after a delay (the bench's 5 ms provider).
"""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs


class ProviderServer:
    def __init__(self, *, delay=0.0):
        self.delay = delay
        self.port = None
        self.status = 200  # answer for new requests: 200, or e.g. 503 for an outage
        self.requests = []  # (idempotency key, identifier) of every request that reached the handler
        self.events = {}  # identifier -> form fields: the meter events recorded
        self.created = []  # identifiers in the order their events were recorded: a duplicate would show here
        self.replies = {}  # idempotency key -> (status, body): replayed for a repeated key
        self.hold_after = None  # hold the request after this many recorded events, unanswered, until released
        self.held = threading.Event()
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        server = ThreadingHTTPServer(("127.0.0.1", self.port or 0), self._handler())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self):
        """Close the listener: connections are refused until `start()` (same port)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.release.set()

    def requests_for(self, identifier):
        return sum(1 for _key, seen in self.requests if seen == identifier)

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK wait between

            def log_message(self, *args):
                pass

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                if len(raw) < length:  # the sender died mid-request: a real provider never processes half a body
                    self.close_connection = True
                    return
                body = raw.decode()
                fields = {key: values[0] for key, values in parse_qs(body).items()}
                key = self.headers.get("Idempotency-Key", "")
                identifier = fields.get("identifier", "")
                if self.path != "/v1/billing/meter_events":
                    return self._answer(404, {"error": {"type": "invalid_request_error", "message": "no route"}})
                with provider._lock:
                    provider.requests.append((key, identifier))
                    status = provider.status
                    if status == 200 and key in provider.replies:
                        status, reply = provider.replies[key]
                    elif status != 200:
                        reply = {"error": {"type": "api_error", "message": "provider unavailable"}}
                    elif identifier in provider.events:
                        status, reply = 400, {"error": {"type": "invalid_request_error", "param": "identifier",
                                                        "code": "duplicate_meter_event",
                                                        "message": f"An event already exists with identifier "
                                                                   f"{identifier}."}}
                    else:
                        provider.events[identifier] = fields
                        provider.created.append(identifier)
                        reply = {"object": "billing.meter_event", "created": int(time.time()), "livemode": False,
                                 "event_name": fields.get("event_name"), "identifier": identifier,
                                 "payload": {"stripe_customer_id": fields.get("payload[stripe_customer_id]"),
                                             "value": fields.get("payload[value]")},
                                 "timestamp": int(fields.get("timestamp") or 0)}
                    if status < 500:
                        provider.replies.setdefault(key, (status, reply))
                    hold = provider.hold_after is not None and len(provider.events) > provider.hold_after
                    if hold:
                        provider.hold_after = None  # once: the restarted worker's requests are answered
                if hold:  # recorded, not answered: the sender is killed now
                    provider.held.set()
                    provider.release.wait(60)
                    return
                if provider.delay:
                    time.sleep(provider.delay)
                self._answer(status, reply)

            def _answer(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Request-Id", f"req_{len(provider.requests)}")
                self.end_headers()
                self.wfile.write(data)

        return Handler
