"""The API's hand-written read paths answer exactly what their serializers declare: the workspace list (prepared
statement, written-out items) against the ORM's scoped queryset and WorkspaceOutputSerializer, page by page; and
the open's own lookup keeps the token's tenant."""
import re

import pytest

from tests.factories import MembershipFactory
from workspaces import selectors
from workspaces.api import WorkspaceOutputSerializer
from workspaces.models import Workspace, WorkspaceTemplate

pytestmark = pytest.mark.django_db


@pytest.fixture
def template():
    return WorkspaceTemplate.objects.create(slug="reads", name="Reads", image="hearth/none:0", internal_port=8080,
                                            cpus="0.10", memory_mb=64, pids_limit=64, warm_min=0, warm_max=0)


def make(membership, name, template):
    return Workspace.objects.create(tenant=membership.tenant, owner=membership.user, template=template, name=name)


def next_link(response):
    match = re.fullmatch(r'<([^>]+)>; rel="next"', response.get("Link", ""))
    return match.group(1) if match else None


def walk(client, url):
    items, links = [], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        items += response.json()
        url = next_link(response)
        links.append(url)
    return items, links


@pytest.mark.parametrize("role, sees", [("owner", "all"), ("admin", "all"), ("member", "own")])
def test_the_list_answers_the_serializers_body_for_the_scoped_rows_page_by_page(make_api_client, template, role,
                                                                                 sees):
    viewer = MembershipFactory(role=role)
    colleague = MembershipFactory(tenant=viewer.tenant)
    for i in range(3):
        make(viewer, f"mine-{i}", template)
        make(colleague, f"theirs-{i}", template)
    make(MembershipFactory(role="owner"), "another-tenant", template)
    gone = make(viewer, "deleted", template)
    Workspace.objects.filter(pk=gone.pk).update(deleted_at=gone.created_at)

    expected = WorkspaceOutputSerializer(
        selectors.workspace_list(tenant=viewer.tenant, membership=viewer).order_by("-pk"), many=True).data
    client = make_api_client(viewer)
    whole = client.get("/api/v1/workspaces")
    assert whole.content == client.get("/api/v1/workspaces?limit=100").content
    assert whole.json() == expected and "Link" not in whole
    assert len(expected) == (6 if sees == "all" else 3)

    items, links = walk(client, "/api/v1/workspaces?limit=2")
    assert items == expected
    assert links[0].startswith("http://testserver/api/v1/workspaces?limit=2&after=")


def test_a_list_cursor_never_reaches_another_tenants_rows(make_api_client, template):
    mine, theirs = MembershipFactory(role="owner"), MembershipFactory(role="owner")
    oldest = make(mine, "oldest", template)
    make(theirs, "theirs", template)  # an id between mine
    newest = make(mine, "newest", template)
    client = make_api_client(mine)
    first = client.get("/api/v1/workspaces?limit=1")
    assert [w["id"] for w in first.json()] == [newest.pk]
    second = client.get(next_link(first))
    assert [w["id"] for w in second.json()] == [oldest.pk] and next_link(second) is None


def test_a_forged_cursor_beyond_any_id_is_a_first_page_not_an_error(make_api_client, template):
    import base64
    import json

    viewer = MembershipFactory(role="owner")
    make(viewer, "one", template)
    client = make_api_client(viewer)
    for value in ("99999999999999999999999", "-99999999999999999999999"):
        cursor = base64.urlsafe_b64encode(json.dumps([value]).encode()).decode().rstrip("=")
        response = client.get(f"/api/v1/workspaces?after={cursor}")
        assert response.status_code == 200, response.content
        assert len(response.json()) == (1 if not value.startswith("-") else 0)


def test_opening_through_one_tenants_token_a_workspace_of_another_of_the_users_tenants_is_404(make_api_client,
                                                                                             template):
    """The open reads the workspace itself; the token's tenant still bounds it, as the scoped queryset did."""
    here = MembershipFactory(role="owner")
    there = MembershipFactory(user=here.user, role="owner")  # the same user, owner of a second tenant
    theirs = make(there, "elsewhere", template)
    response = make_api_client(here).post(f"/api/v1/workspaces/{theirs.pk}/open")
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    for pk in (theirs.pk + 10_000, 99999999999999999999999):
        response = make_api_client(here).post(f"/api/v1/workspaces/{pk}/open")
        assert response.status_code == 404, (pk, response.content)
