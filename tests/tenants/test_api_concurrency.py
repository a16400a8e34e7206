"""Invariants under concurrent API calls against a real threaded server and PostgreSQL: seats, last owner."""
import threading

import httpx
import pytest

from tenants import services
from tenants.models import Invitation, Membership, Role
from tests.factories import MembershipFactory, TenantFactory, UserFactory

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True, serialized_rollback=True)]


def _token(membership):
    return services.api_token_create(membership=membership, name="race", actor=membership.user)[1]


def _together(calls):
    """Start every call at the same moment; return their responses."""
    barrier = threading.Barrier(len(calls))
    results = [None] * len(calls)

    def run(i, call):
        with httpx.Client(timeout=30) as client:
            barrier.wait()
            results[i] = call(client)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(calls)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_concurrent_invites_never_exceed_the_seats(live_server):
    tenant = TenantFactory()  # team: 3 seats
    owner = MembershipFactory(tenant=tenant, role=Role.OWNER)
    headers = {"Authorization": f"Bearer {_token(owner)}"}
    url = f"{live_server.url}/api/v1/members"
    responses = _together([
        (lambda c, i=i: c.post(url, json={"email": f"racer{i}@example.test"}, headers=headers)) for i in range(8)
    ])
    codes = sorted(r.status_code for r in responses)
    assert codes == [201, 201] + [409] * 6, [r.text for r in responses]
    assert all(r.json()["code"] == "seat_limit" for r in responses if r.status_code == 409)
    assert Invitation.objects.filter(tenant=tenant).count() == 2


def test_two_owners_demoting_each_other_at_once_leave_one_owner(live_server):
    tenant = TenantFactory()
    a = MembershipFactory(tenant=tenant, role=Role.OWNER, user=UserFactory())
    b = MembershipFactory(tenant=tenant, role=Role.OWNER, user=UserFactory())
    base = f"{live_server.url}/api/v1/members"
    as_a, as_b = ({"Authorization": f"Bearer {_token(m)}"} for m in (a, b))
    responses = _together([
        lambda c: c.patch(f"{base}/{b.pk}", json={"role": "member"}, headers=as_a),
        lambda c: c.patch(f"{base}/{a.pk}", json={"role": "member"}, headers=as_b),
    ])
    codes = sorted(r.status_code for r in responses)
    # The second one finds, under the lock, that it was demoted meanwhile (403) or would leave no owner (409).
    assert codes[0] == 200 and codes[1] in (403, 409), [r.text for r in responses]
    assert Membership.objects.filter(tenant=tenant, role=Role.OWNER).count() == 1
