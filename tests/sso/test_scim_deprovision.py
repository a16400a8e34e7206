"""A SCIM deactivation ends the member's live workspace session at once: the session ends (metered to the moment),
its route is gone from the real gateway so the next proxied request is refused, their API token of the tenant stops
working, and their membership of another tenant is untouched.

Real HAProxy (the gateway's own fixtures), a real tiny container, real PostgreSQL; the SCIM call goes through
Django's test client."""
import time
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants.models import AuditLog, Membership, Plan
from tests.conftest import api_client_for
from tests.factories import MembershipFactory, TenantFactory
from tests.sso.conftest import ScimClient, scim_patch, scim_provider_for, scim_user_body
from tests.workspaces.fixtures_pool import *  # noqa: F403
from tests.workspaces.gateway_fixtures import gateway, gateway_env  # noqa: F401
from workspaces import pool, services
from workspaces.models import Session

pytestmark = [pytest.mark.django_db, pytest.mark.docker, pytest.mark.slow]


@pytest.mark.parametrize("how", ["patch-active-false", "delete"])
def test_a_scim_deactivation_ends_the_live_session_at_once(gateway, workspace, member, node, tiny_template,  # noqa: F811
                                                           django_capture_on_commit_callbacks, how):
    tenant = member.tenant
    MembershipFactory(tenant=tenant, role="owner", user__email=f"owner@{member.user.email.split('@')[1]}")
    provider, token = scim_provider_for(tenant, domains=(member.user.email.split("@")[1],))
    scim = ScimClient(token)
    scim_id = scim.post("/Users", scim_user_body(member.user.email)).json()["id"]  # links the existing member
    elsewhere = MembershipFactory(user=member.user, tenant=TenantFactory(plan=Plan.objects.get(slug="enterprise")))
    api, api_elsewhere = api_client_for(member), api_client_for(elsewhere)

    pool.pool_fill()
    opened = services.workspace_open(workspace=workspace, user=member.user)
    page = gateway.get(workspace.host_key, "/", token=opened.token)
    assert page.status_code == 200 and "hearth tiny workspace" in page.text
    time.sleep(1.1)  # a second of use to meter

    started = timezone.now()
    with django_capture_on_commit_callbacks(execute=True):
        if how == "delete":
            response = scim.delete(f"/Users/{scim_id}")
        else:
            response = scim.patch(f"/Users/{scim_id}", scim_patch({"op": "replace", "value": {"active": False}}))
    assert response.status_code in (200, 204), response.content

    session = Session.objects.get(pk=opened.session.pk)
    assert session.ended_at is not None and session.ended_at - started < timedelta(seconds=5)
    assert session.metered_until == session.ended_at
    assert gateway.get(workspace.host_key, "/", token=opened.token).status_code >= 400
    assert not Membership.objects.filter(tenant=tenant, user=member.user).exists()
    assert api.get("/api/v1/tenant").status_code == 401
    assert Membership.objects.filter(pk=elsewhere.pk).exists()
    assert api_elsewhere.get("/api/v1/tenant").status_code == 200
    actions = list(AuditLog.objects.filter(tenant=tenant, created_at__gte=started).order_by("pk")
                   .values_list("action", flat=True))
    scim_action = "scim.user_deleted" if how == "delete" else "scim.user_deactivated"
    assert actions[:2] == ["member.removed", scim_action] and "session.ended" in actions
