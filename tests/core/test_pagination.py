"""List endpoints page with a keyset cursor: the body stays a list, the next page is in a `Link` header."""
import re

import pytest

from tenants.models import ApiToken
from tenants.services import api_token_create
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def next_link(response):
    match = re.fullmatch(r'<([^>]+)>; rel="next"', response.get("Link", ""))
    return match.group(1) if match else None


def walk(client, url):
    pages, seen = [], []
    while url:
        response = client.get(url)
        assert response.status_code == 200, response.content
        pages.append(len(response.json()))
        seen += [item["id"] for item in response.json()]
        url = next_link(response)
    return pages, seen


def test_tokens_are_paged_newest_first_without_repeats_or_gaps(make_api_client):
    membership = MembershipFactory(role="owner")
    client = make_api_client(membership)
    for i in range(6):
        api_token_create(membership=membership, name=f"t{i}", actor=membership.user)
    pages, seen = walk(client, "/api/v1/tokens?limit=3")
    expected = list(ApiToken.objects.filter(membership=membership).order_by("-pk").values_list("pk", flat=True))
    assert pages == [3, 3, 1] and seen == expected


def test_a_row_added_between_pages_does_not_shift_the_next_page(make_api_client):
    membership = MembershipFactory(role="owner")
    client = make_api_client(membership)
    for i in range(3):
        api_token_create(membership=membership, name=f"t{i}", actor=membership.user)
    first = client.get("/api/v1/tokens?limit=2")
    api_token_create(membership=membership, name="late", actor=membership.user)
    second = client.get(next_link(first))
    ids = [t["id"] for t in first.json()] + [t["id"] for t in second.json()]
    assert len(ids) == len(set(ids)) == 4  # the four that existed when paging started; "late" is on page 1 now


def test_members_are_paged_oldest_first(make_api_client):
    owner = MembershipFactory(role="owner")
    for _ in range(4):
        MembershipFactory(tenant=owner.tenant)
    pages, seen = walk(make_api_client(owner), "/api/v1/members?limit=2")
    assert pages == [2, 2, 1] and seen == sorted(seen)


def test_a_cursor_never_reaches_another_tenants_rows(make_api_client):
    mine, theirs = MembershipFactory(role="owner"), MembershipFactory(role="owner")
    client = make_api_client(mine)  # my token "test": the oldest
    api_token_create(membership=theirs, name="theirs", actor=theirs.user)  # an id between mine
    api_token_create(membership=mine, name="newest", actor=mine.user)
    first = client.get("/api/v1/tokens?limit=1")
    assert [t["name"] for t in first.json()] == ["newest"]
    second = client.get(next_link(first))
    assert [t["name"] for t in second.json()] == ["test"] and next_link(second) is None


@pytest.mark.parametrize("query, message", [
    ("limit=0", "whole number"), ("limit=501", "whole number"), ("limit=ten", "whole number"),
    ("after=-3", "Not a cursor"), ("after=x", "Not a cursor"), ("after=WzEsMl0", "Not a cursor"),  # [1,2]
])
def test_bad_page_parameters_are_refused_with_a_message(make_api_client, query, message):
    client = make_api_client(MembershipFactory(role="owner"))
    for url in ("/api/v1/tokens", "/api/v1/members", "/api/v1/workspaces", "/api/v1/sessions",
                "/api/v1/invitations"):
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400, (url, response.content)
        assert message in response.content.decode()


def test_sessions_are_paged_newest_first_by_start(make_api_client):
    """Session ids are UUIDs: the cursor is (started_at, id), not an id."""
    from datetime import timedelta

    from django.utils import timezone

    from workspaces import services as workspace_services
    from workspaces.models import Container, Node, Session, WorkspaceTemplate

    owner = MembershipFactory(role="owner")
    template = WorkspaceTemplate.objects.filter(enabled=True).first()
    node = Node.objects.create(name="paging", engine_url="unix:///nonexistent.sock", enabled=False)
    workspace = workspace_services.workspace_create(tenant=owner.tenant, owner=owner.user, name="w",
                                                    template=template)
    start = timezone.now() - timedelta(hours=1)
    for i in range(7):  # two share a start: the id breaks the tie
        container = Container.objects.create(node=node, template=template, state=Container.State.REMOVED)
        at = start + timedelta(minutes=min(i, 5))
        Session.objects.create(tenant=owner.tenant, workspace=workspace, user=owner.user, container=container,
                               started_at=at, last_activity_at=at, ended_at=at + timedelta(seconds=30),
                               end_reason="closed")
    pages, seen = walk(make_api_client(owner), "/api/v1/sessions?limit=3")
    expected = [str(pk) for pk in Session.objects.filter(tenant=owner.tenant).order_by("-started_at", "-pk")
                .values_list("pk", flat=True)]
    assert pages == [3, 3, 1] and seen == expected
