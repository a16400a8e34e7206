"""Staff permissions on every admin action: each declares the change (or delete) permission it needs, and a staff
member who may only view is offered none and has every POST refused without a change.

The actions are found in admin.site._registry, so an action added later without a permission fails here.
"""
import pytest
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.contrib.auth.models import Permission
from django.test import RequestFactory
from django.urls import reverse

from metering.models import ServiceToken
from metering.tokens import service_token_create
from tenants.models import Tenant
from tests.factories import TenantFactory, UserFactory
from workspaces.models import Node

pytestmark = pytest.mark.django_db

WRITE_PERMISSIONS = {"add", "change", "delete"}


def every_action():
    """(model, model admin, action name, function) for every action of every registered model admin."""
    for model, model_admin in admin.site._registry.items():
        for func, name, _description in model_admin._get_base_actions():
            yield pytest.param(model, model_admin, name, func, id=f"{model._meta.label_lower}.{name}")


ACTIONS = list(every_action())


def staff_with(*codenames):
    """A staff member who may view everything in admin, plus `codenames` ("app_label.codename")."""
    user = UserFactory(is_staff=True)
    user.user_permissions.add(*Permission.objects.filter(codename__startswith="view_"))
    for label in codenames:
        app_label, codename = label.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app_label, codename=codename))
    return UserFactory._meta.model.objects.get(pk=user.pk)  # fresh: no cached permissions


def test_the_walk_finds_the_actions_the_issue_names():
    names = {p.id for p in ACTIONS}
    assert {"tenants.tenant.suspend", "tenants.tenant.resume", "tenants.tenant.change_plan",
            "tenants.tenant.offboard", "workspaces.node.drain", "workspaces.node.reconcile_now",
            "workspaces.session.end_sessions", "workspaces.workspacetemplate.pause_pools",
            "workspaces.workspacetemplate.fill_pools", "metering.servicetoken.revoke"} <= names


@pytest.mark.parametrize(("model", "model_admin", "name", "func"), ACTIONS)
def test_every_action_declares_a_write_permission(model, model_admin, name, func):
    declared = set(getattr(func, "allowed_permissions", ()))
    assert declared, f"{model_admin}.{name} declares no permission (@admin.action(permissions=[...]))"
    # A custom permission ("revoke") must be a has_<perm>_permission method of the admin; "view" alone is no guard.
    assert declared - {"view"}, f"{model_admin}.{name} needs only the view permission"
    for perm in declared:
        assert callable(getattr(model_admin, f"has_{perm}_permission", None)), (name, perm)


@pytest.mark.parametrize(("model", "model_admin", "name", "func"), ACTIONS)
def test_a_view_only_staff_member_is_offered_no_action_and_a_post_is_refused(client, model, model_admin, name,
                                                                            func):
    user = staff_with()
    request = RequestFactory().get("/admin/")
    request.user = user
    assert name not in model_admin.get_actions(request)
    client.force_login(user)
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    listing = client.get(url)
    assert listing.status_code == 200
    if listing.context and listing.context.get("action_form"):
        offered = {value for value, _ in listing.context["action_form"].fields["action"].choices}
        assert name not in offered
    response = client.post(url, {"action": name, ACTION_CHECKBOX_NAME: ["1"], "apply": "1", "confirm": "OFFBOARD",
                                 "post": "yes"}, follow=True)
    assert response.status_code in (200, 403)
    if response.status_code == 200:
        # Back on the list, not on an action's confirmation or form page; with no action offered at all, the POST
        # is not even read as one.
        assert "admin/change_list.html" in [t.name for t in response.templates]
        shown = [str(m) for m in response.context["messages"]]
        assert shown in ([], ["No action selected."]), shown


def run(client, model, action, objects, **extra):
    url = reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_changelist")
    return client.post(url, {"action": action, ACTION_CHECKBOX_NAME: [o.pk for o in objects], **extra}, follow=True)


def test_suspend_needs_change_tenant(client):
    tenant = TenantFactory()
    client.force_login(staff_with())
    run(client, Tenant, "suspend", [tenant], apply="1", reason="abuse")
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.ACTIVE
    client.force_login(staff_with("tenants.change_tenant"))
    run(client, Tenant, "suspend", [tenant], apply="1", reason="abuse")
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.SUSPENDED


def test_offboard_needs_delete_tenant_not_only_change(client):
    tenant = TenantFactory()
    client.force_login(staff_with("tenants.change_tenant"))
    response = run(client, Tenant, "offboard", [tenant], apply="1", confirm="OFFBOARD")
    assert [str(m) for m in response.context["messages"]] == ["No action selected."]
    tenant.refresh_from_db()
    assert tenant.status == Tenant.Status.ACTIVE


def test_drain_needs_change_node(client):
    node = Node.objects.create(name="spare", engine_url="unix:///nonexistent.sock", cpus=2, memory_mb=2048)
    client.force_login(staff_with())
    run(client, Node, "drain", [node])
    node.refresh_from_db()
    assert not node.draining
    client.force_login(staff_with("workspaces.change_node"))
    run(client, Node, "drain", [node])
    node.refresh_from_db()
    assert node.draining


def test_revoking_a_service_token_needs_change_servicetoken(client):
    token, _ = service_token_create(name="gw", meters=["ai_builder_tokens"])
    client.force_login(staff_with())
    run(client, ServiceToken, "revoke", [token])
    token.refresh_from_db()
    assert token.revoked_at is None
    client.force_login(staff_with("metering.change_servicetoken"))
    run(client, ServiceToken, "revoke", [token])
    token.refresh_from_db()
    assert token.revoked_at is not None


def test_a_usage_correction_needs_add_usageevent(client):
    client.force_login(staff_with())
    assert client.get("/admin/metering/usageevent/correct/").status_code in (302, 403)
