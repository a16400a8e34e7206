"""A removed member's portal sessions stop acting in the tenant from their very next request: a session that signed in
through the tenant's identity provider is signed out, one that only chose the tenant forgets it, and the user's
other sessions (and other users') go on. Their API tokens of that tenant stop working at once."""
import pytest
from django.contrib.sessions.models import Session
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from tenants import portal, services
from tenants.models import AuditLog
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory

pytestmark = pytest.mark.django_db


def _session(user, **data):
    client = Client()
    client.force_login(user)
    session = client.session
    for key, value in data.items():
        session[key] = value
    session.save()
    return client


def test_a_removed_members_portal_sessions_and_tokens_leave_the_tenant():
    acme, globex = TenantFactory(slug="acme"), TenantFactory(slug="globex")
    owner = MembershipFactory(tenant=acme, role="owner")
    member = MembershipFactory(tenant=acme)
    MembershipFactory(tenant=globex, user=member.user)
    bystander = MembershipFactory(tenant=acme)
    at = timezone.now().isoformat()
    signed_in_by_idp = _session(member.user, **{portal.SESSION_KEY: "acme",
                                                portal.SSO_LOGIN_SESSION_KEY: {"tenant": acme.pk, "at": at}})
    signed_in_by_globex_idp = _session(member.user, **{portal.SSO_LOGIN_SESSION_KEY: {"tenant": globex.pk,
                                                                                      "at": at}})
    chose_acme = _session(member.user, **{portal.SESSION_KEY: "acme"})
    other_user = _session(bystander.user, **{portal.SESSION_KEY: "acme",
                                             portal.SSO_LOGIN_SESSION_KEY: {"tenant": acme.pk, "at": at}})
    dashboard = reverse("portal:dashboard")
    assert signed_in_by_idp.get(dashboard).context["tenant"] == acme
    api = api_client_for(member)
    assert api.get("/api/v1/tenant").status_code == 200

    services.member_remove(membership=member, actor=owner.user)

    key = signed_in_by_idp.session.session_key
    response = signed_in_by_idp.get(dashboard)
    assert response.status_code == 302 and response["Location"].startswith(reverse("account_login"))
    assert not Session.objects.filter(session_key=key).exists()
    page = chose_acme.get(dashboard)
    assert page.status_code == 200 and page.context["tenant"] == globex
    assert portal.SESSION_KEY not in chose_acme.session
    assert signed_in_by_globex_idp.get(dashboard).context["tenant"] == globex
    page = other_user.get(dashboard)
    assert page.status_code == 200 and page.context["tenant"] == acme
    assert api.get("/api/v1/tenant").status_code == 401
    row = AuditLog.objects.get(tenant=acme, action="member.removed")
    assert row.data == {"role": "member", "api_tokens_revoked": 1}
