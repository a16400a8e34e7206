"""core.middleware: the API by token alone; the portal and admin keep their session, CSRF, login and messages."""
import pytest
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_a_portal_session_does_not_authenticate_the_api_and_sets_no_cookie_there(make_api_client):
    membership = MembershipFactory(role="owner")
    browser = Client()
    browser.force_login(membership.user)
    assert browser.get(reverse("portal:dashboard")).status_code == 200  # the session works in the portal
    answer = browser.get("/api/v1/tenant")
    assert answer.status_code == 401
    api = make_api_client(membership)
    answer = api.get("/api/v1/tenant")
    assert answer.status_code == 200 and answer.json()["slug"] == membership.tenant.slug
    assert not answer.cookies and "Cookie" not in answer.get("Vary", "")


def test_the_portal_still_refuses_a_post_without_its_csrf_token():
    membership = MembershipFactory(role="owner")
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(membership.user)
    assert browser.post(reverse("account_logout")).status_code == 403
    page = browser.get(reverse("account_logout"))
    token = page.cookies["csrftoken"].value
    assert browser.post(reverse("account_logout"), {"csrfmiddlewaretoken": token}).status_code == 302


def test_admin_keeps_its_login():
    answer = Client().get("/admin/")
    assert answer.status_code == 302 and "/admin/login/" in answer["Location"]


def test_api_writes_need_no_csrf_token(make_api_client):
    membership = MembershipFactory(role="owner")
    api = make_api_client(membership)
    api.handler.enforce_csrf_checks = True
    assert api.patch("/api/v1/tenant", {"name": "Renamed"}, format="json").status_code == 200
    assert APIClient(enforce_csrf_checks=True).patch("/api/v1/tenant", {}, format="json").status_code == 401
