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
    api_token_create(membership=theirs, name="theirs", actor=theirs.user)
    client = make_api_client(mine)
    response = client.get("/api/v1/tokens?after=999999999&limit=500")
    assert response.status_code == 200
    assert {t["name"] for t in response.json()} == {"test"}


@pytest.mark.parametrize("query", ["limit=0", "limit=501", "limit=ten", "after=-3", "after=x"])
def test_bad_page_parameters_are_refused_with_a_message(make_api_client, query):
    client = make_api_client(MembershipFactory(role="owner"))
    for url in ("/api/v1/tokens", "/api/v1/members", "/api/v1/workspaces", "/api/v1/sessions",
                "/api/v1/invitations"):
        response = client.get(f"{url}?{query}")
        assert response.status_code == 400, (url, response.content)
        assert "whole number" in response.content.decode()
