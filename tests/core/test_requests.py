"""What every request gets whatever the endpoint: a body size limit (413 in the JSON error shape under /api/), and
the JSON 404 for any method on an unknown /api/ path (no HTML, no CSRF page)."""
import json

import pytest
from django.test import Client
from rest_framework.test import APIClient

from metering.models import UsageEvent
from metering.tokens import service_token_create
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db

METHODS = ["get", "post", "put", "patch", "delete"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("path", ["/api/nope", "/api/v1/nope", "/api/v1/workspaces/1/nope/deeper"])
def test_every_method_on_an_unknown_api_path_is_the_json_404(method, path):
    # A browser client (CSRF checks on, a session cookie) and a token client alike.
    for client in (Client(enforce_csrf_checks=True), api_client_for(MembershipFactory())):
        body = {} if method == "get" else {"data": "{}", "content_type": "application/json"}
        response = getattr(client, method)(path, **body)
        assert response.status_code == 404, (method, path, response.content[:200])
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"code": "not_found", "detail": f"No API endpoint at {path}."}


def test_an_api_body_past_the_limit_is_413_json(settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client = api_client_for(MembershipFactory(role="owner"))
    big = json.dumps({"name": "x" * 2000})
    for path in ("/api/v1/tenant", "/api/v1/workspaces", "/api/v1/nope"):
        response = client.generic("PATCH" if path == "/api/v1/tenant" else "POST", path, big,
                                  content_type="application/json")
        assert response.status_code == 413, (path, response.content[:200])
        assert response.json()["code"] == "request_too_large"
        assert "1000" in response.json()["detail"]


def test_usage_ingestion_body_past_the_limit_is_413_and_records_nothing(settings):
    # The ingestion's own parser reads the raw body: the limit holds there too, before anything is decoded.
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 5000
    _, plaintext = service_token_create(name="limit test", meters=["ai_builder_tokens"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {plaintext}")
    tenant = TenantFactory()
    events = [{"id": f"big-{i}", "tenant": tenant.slug, "meter": "ai_builder_tokens", "quantity": 1}
              for i in range(200)]
    body = json.dumps({"events": events})
    assert len(body) > 5000
    response = client.post("/api/v1/usage/events", body, content_type="application/json")
    assert response.status_code == 413, response.content[:200]
    assert response.json()["code"] == "request_too_large"
    assert not UsageEvent.objects.exists()
    small = client.post("/api/v1/usage/events", json.dumps(events[:3]), content_type="application/json")
    assert small.status_code == 200 and small.json()["accepted"] == 3


def test_a_portal_form_past_the_limit_is_refused(client, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    response = client.post("/accounts/login/", {"login": "a@example.test", "password": "x" * 5000})
    assert response.status_code == 413
