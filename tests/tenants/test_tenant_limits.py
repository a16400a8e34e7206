"""The tenants one user may own (issue 12, capacity abuse): the service, the portal, sign-up, the command, admin
(staff: exempt) and two creations at once, on the real database."""
import io
import threading

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from tenants import services
from tenants.exceptions import Conflict
from tenants.models import Membership, Tenant, User
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _limits(settings):
    settings.ACCOUNT_RATE_LIMITS = False
    settings.TENANTS_MAX_OWNED_PER_USER = 3
    settings.TENANTS_MAX_FREE_OWNED_PER_USER = 1


def test_one_free_tenant_per_user_then_paid_ones_up_to_the_limit():
    owner = UserFactory()
    services.tenant_onboard(name="First", owner=owner)
    with pytest.raises(Conflict) as refused:
        services.tenant_onboard(name="Second free", owner=owner)
    assert refused.value.code == "free_tenant_limit" and "upgrade it to a paid plan" in refused.value.message
    services.tenant_onboard(name="Paid one", owner=owner, plan="pro")
    services.tenant_onboard(name="Paid two", owner=owner, plan="team")
    with pytest.raises(Conflict) as refused:
        services.tenant_onboard(name="Fourth", owner=owner, plan="pro")
    assert refused.value.code == "tenant_limit" and "own 3 organisations" in refused.value.message
    assert Membership.objects.filter(user=owner, role="owner").count() == 3
    assert not Tenant.objects.filter(name__in=["Second free", "Fourth"]).exists()


def test_only_owned_tenants_count():
    user = UserFactory()
    MembershipFactory(user=user, role="member", tenant=TenantFactory(plan_id=_free_plan_id()))
    MembershipFactory(user=user, role="admin", tenant=TenantFactory(plan_id=_free_plan_id()))
    services.tenant_onboard(name="Mine", owner=user)  # a member or admin elsewhere still gets their own


def test_staff_and_synthetic_tenants_are_exempt():
    owner, staff = UserFactory(), UserFactory(is_staff=True)
    services.tenant_onboard(name="First", owner=owner)
    services.tenant_onboard(name="Helped by staff", owner=owner, actor=staff)
    services.tenant_onboard(name="Load test", owner=owner, synthetic=True)
    assert Membership.objects.filter(user=owner, role="owner").count() == 3


def test_portal_refuses_a_second_free_organisation_with_a_form_error(client):
    owner = UserFactory()
    client.force_login(owner)
    assert client.post(reverse("portal:tenant_create"), {"name": "Initech", "plan": "free"}).status_code == 302
    # A paid plan starts on Free until it is paid, so it is refused too while the user owns a Free tenant.
    for plan in ("free", "pro"):
        response = client.post(reverse("portal:tenant_create"), {"name": "Initech 2", "plan": plan})
        assert response.status_code == 409
        page = response.content.decode()
        assert 'class="error"' in page and "on the Free plan" in page
    assert Membership.objects.filter(user=owner, role="owner").count() == 1


def test_signup_with_a_zero_limit_is_a_form_error_and_creates_no_user(client, settings, smtp_server):
    settings.TENANTS_MAX_FREE_OWNED_PER_USER = 0
    response = client.post(reverse("account_signup"), {
        "email": "grace@example.test", "password1": "a long passphrase 42", "password2": "a long passphrase 42",
        "organisation": "Hopper Labs", "plan": "free"})
    assert response.status_code == 400
    assert "on the Free plan" in response.content.decode()
    assert not User.objects.filter(email="grace@example.test").exists()


def test_command_says_why(settings):
    owner = UserFactory(email="bob@example.test")
    services.tenant_onboard(name="First", owner=owner)
    with pytest.raises(CommandError, match="on the Free plan"):
        call_command("onboard_tenant", "--name", "Second", "--owner-email", "bob@example.test",
                     stdout=io.StringIO())
    assert not Tenant.objects.filter(name="Second").exists()


def test_admin_onboarding_is_exempt(admin_client):
    owner = UserFactory(email="peter@initech.test")
    services.tenant_onboard(name="First", owner=owner)
    response = admin_client.post(reverse("admin:tenants_tenant_add"),
                                 {"name": "Second", "owner_email": "peter@initech.test", "plan": "free"})
    assert response.status_code == 302
    assert Membership.objects.filter(user=owner, role="owner").count() == 2


@pytest.mark.django_db(transaction=True)
def test_two_creations_at_once_take_one_free_tenant():
    owner = UserFactory()
    barrier, results = threading.Barrier(4), []

    def create(n):
        barrier.wait()
        try:
            services.tenant_onboard(name=f"Race {n}", owner=owner)
            results.append("ok")
        except Conflict as exc:
            results.append(exc.code)
        finally:
            connection.close()

    threads = [threading.Thread(target=create, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["free_tenant_limit"] * 3 + ["ok"]
    assert Membership.objects.filter(user=owner, role="owner").count() == 1


def _free_plan_id():
    from tenants.models import Plan

    return Plan.objects.get(slug="free").pk
