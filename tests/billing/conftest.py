"""Fixtures for billing: the offline Stripe as a subprocess over real HTTP, a webhook receiver, priced plans."""
import json
import queue
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import stripe

from tests.conftest import require_service

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_SECRET_KEY = "sk_test_" + "emulator" * 3


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_emulator(port, log_path, *options):
    """`python -m billing.stripe_emulator` as make run starts it; its output goes to a file nobody has to drain."""
    with open(log_path, "a") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "billing.stripe_emulator", "--port", str(port), *options],
            cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)


def wait_until_answering(url, process, timeout=15):
    deadline = time.monotonic() + timeout
    request = urllib.request.Request(url + "/v1/account", headers={"Authorization": f"Bearer {TEST_SECRET_KEY}"})
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the emulator exited with {process.returncode}")
        try:
            with urllib.request.urlopen(request, timeout=1) as response:
                if response.status == 200:
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


@pytest.fixture(scope="session")
def stripe_emulator(tmp_path_factory):
    """The base URL of a fresh emulator (`python -m billing.stripe_emulator`) that saves nothing."""
    port = free_port()
    process = start_emulator(port, tmp_path_factory.mktemp("stripe-emulator") / "emulator.log", "--in-memory")
    url = f"http://127.0.0.1:{port}"
    try:
        require_service("The Stripe emulator", lambda: wait_until_answering(url, process))
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture
def stripe_api(stripe_emulator, monkeypatch):
    """The stripe SDK pointed at the emulator, as `make run` points it."""
    monkeypatch.setattr(stripe, "api_base", stripe_emulator)
    monkeypatch.setattr(stripe, "api_key", TEST_SECRET_KEY)
    return stripe


class WebhookReceiver:
    """A local HTTP server that keeps every delivery (raw body and Stripe-Signature) in arrival order."""

    def __init__(self):
        self.deliveries = queue.Queue()
        self.seen = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.deliveries.put((body, self.headers.get("Stripe-Signature")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stripe/webhook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait_for(self, event_type, match=lambda event: True, timeout=10):
        """The first delivery (raw body, signature header) of `event_type` whose event satisfies `match`."""
        for body, signature in self.seen:
            event = json.loads(body)
            if event["type"] == event_type and match(event):
                return body, signature
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {event_type} webhook within {timeout}s; got "
                                     f"{[json.loads(b)['type'] for b, _ in self.seen]}")
            try:
                body, signature = self.deliveries.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append((body, signature))
            event = json.loads(body)
            if event["type"] == event_type and match(event):
                return body, signature

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhooks(stripe_api):
    """A receiver registered as a webhook endpoint for every event; yields (receiver, endpoint secret)."""
    receiver = WebhookReceiver()
    endpoint = stripe_api.WebhookEndpoint.create(url=receiver.url, enabled_events=["*"])
    yield receiver, endpoint.secret
    stripe_api.WebhookEndpoint.delete(endpoint.id)
    receiver.close()


def unique(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def plans(stripe_api):
    """A Pro product with a licensed monthly price and a metered overage price backed by a meter."""
    product = stripe_api.Product.create(name=unique("Pro"))
    meter = stripe_api.billing.Meter.create(display_name="Workspace hours", event_name=unique("workspace_hours"),
                                            default_aggregation={"formula": "sum"})
    base = stripe_api.Price.create(product=product.id, currency="usd", unit_amount=2000,
                                   recurring={"interval": "month"}, lookup_key=unique("pro_monthly"))
    overage = stripe_api.Price.create(product=product.id, currency="usd", unit_amount=12,
                                      recurring={"interval": "month", "usage_type": "metered", "meter": meter.id},
                                      lookup_key=unique("pro_overage"))
    team = stripe_api.Price.create(product_data={"name": unique("Team")}, currency="usd", unit_amount=5000,
                                   recurring={"interval": "month"}, lookup_key=unique("team_monthly"))
    return {"product": product, "meter": meter, "base": base, "overage": overage, "team": team}
