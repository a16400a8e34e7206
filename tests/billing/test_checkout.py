"""The Billing page, the customer portal and GET /api/v1/billing: owners see amounts, members the plan and status,
another tenant's token its own tenant only; coming back from Checkout shows the plan at once."""
import pytest
from django.test import Client

from tests.billing.fixtures_subscriptions import *  # noqa: F403
from tests.billing.fixtures_subscriptions import pay
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


def browser_of(user):
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def paying(stripe_emulator, catalogue, free_tenant):
    """A tenant that chose Team and paid; the webhook has not arrived yet."""
    tenant, owner, client = free_tenant
    response = client.post("/api/v1/tenant/plan", {"plan": "team"}, format="json")
    completed = pay(stripe_emulator, response.json()["checkout_url"])
    return tenant, owner, client, completed


def test_back_from_checkout_the_page_shows_the_paid_plan(paying):
    tenant, owner, _, completed = paying
    page = browser_of(owner.user).get(f"/billing/?checkout={completed['id']}", follow=True)

    assert page.status_code == 200
    text = page.content.decode()
    assert "is on the Team plan" in text and "upcoming-amount" in text and "$25" in text
    tenant.refresh_from_db()
    assert tenant.plan.slug == "team"


def test_members_see_the_plan_but_no_amounts(paying):
    tenant, owner, client, completed = paying
    browser_of(owner.user).get(f"/billing/?checkout={completed['id']}")
    member = MembershipFactory(tenant=tenant, role="admin")

    api = api_client_for(member).get("/api/v1/billing")
    page = browser_of(member.user).get("/billing/").content.decode()
    portal = browser_of(member.user).post("/billing/portal/")

    assert api.status_code == 200
    assert api.json() == {"plan": "team", "status": "active", "period_end": api.json()["period_end"],
                          "upcoming_amount_cents": None, "currency": "usd"}
    assert "upcoming-amount" not in page and "shown to the organisation's owners" in page
    assert portal.status_code == 302 and portal["Location"] == "/billing/"
    assert client.get("/api/v1/billing").json()["upcoming_amount_cents"] == 2500


def test_another_tenants_token_sees_its_own_tenant(paying):
    tenant, owner, client, completed = paying
    browser_of(owner.user).get(f"/billing/?checkout={completed['id']}")
    other = MembershipFactory(tenant=TenantFactory(), role="owner")

    response = api_client_for(other).get("/api/v1/billing")

    assert response.status_code == 200
    assert response.json()["plan"] == "team" and response.json()["status"] == "none"
    assert response.json()["upcoming_amount_cents"] is None and response.json()["period_end"] is None
    assert Client().get("/api/v1/billing").status_code == 401


def test_the_owner_goes_to_stripes_customer_portal(paying, stripe_emulator):
    tenant, owner, _, _ = paying
    response = browser_of(owner.user).post("/billing/portal/")
    assert response.status_code == 302
    assert response["Location"].startswith(f"{stripe_emulator}/_emulator/billing_portal/")
    assert browser_of(owner.user).get("/billing/portal/").status_code == 405


def test_the_dashboard_card_shows_the_subscription(paying):
    tenant, owner, _, completed = paying
    browser = browser_of(owner.user)
    assert "none (no paid subscription)" in browser.get("/").content.decode()
    browser.get(f"/billing/?checkout={completed['id']}")

    page = browser.get("/").content.decode()

    assert "card-billing" in page and "<dd>Team</dd>" in page and "<dd>active</dd>" in page
