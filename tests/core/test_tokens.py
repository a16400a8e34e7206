"""core.tokens: the one implementation of bearer tokens, through both kinds (personal API tokens, service tokens)."""
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from core.tokens import TokenKind, hash_secret
from metering.models import ServiceToken
from metering.tokens import service_token_authenticate, service_token_create, service_token_revoke
from tenants.audit import audit_record
from tenants.models import ApiToken, AuditLog, Membership
from tenants.services import api_token_create, api_token_revoke
from tenants.tokens import api_token_authenticate
from tests.factories import MembershipFactory

pytestmark = pytest.mark.django_db


def test_token_format_and_only_the_hash_is_stored():
    token, plaintext = service_token_create(name="gateway")
    assert re.fullmatch(r"hsv_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", plaintext)
    assert plaintext.split("_")[1] == token.prefix
    assert token.token_hash == hash_secret(plaintext) != plaintext
    assert not ServiceToken.objects.filter(token_hash__contains=plaintext.split("_", 2)[2]).exists()
    membership = MembershipFactory(role="member")
    api_token, api_plaintext = api_token_create(membership=membership, name="ci", actor=membership.user)
    assert re.fullmatch(r"hth_[0-9a-f]{8}_[A-Za-z0-9_-]{43}", api_plaintext)
    assert api_token.token_hash == hash_secret(api_plaintext)


def test_create_and_revoke_write_one_audit_row_each_and_revoking_twice_writes_none():
    membership = MembershipFactory(role="member")
    token, _ = api_token_create(membership=membership, name="ci", actor=membership.user)
    api_token_revoke(token=token, actor=membership.user)
    api_token_revoke(token=token, actor=membership.user)
    rows = list(AuditLog.objects.filter(action__startswith="api_token.").order_by("pk"))
    assert [(r.action, r.tenant_id, r.target) for r in rows] == [
        ("api_token.created", membership.tenant_id, f"{membership.user.email}:{token.prefix}"),
        ("api_token.revoked", membership.tenant_id, f"{membership.user.email}:{token.prefix}"),
    ]
    assert rows[0].data == {"name": "ci"}

    service, _ = service_token_create(name="gateway")
    service_token_revoke(token=service)
    service_token_revoke(token=service)
    rows = AuditLog.objects.filter(action__startswith="service_token.").order_by("pk")
    assert list(rows.values_list("action", "tenant", "target")) == [
        ("service_token.created", None, f"gateway:{service.prefix}"),
        ("service_token.revoked", None, f"gateway:{service.prefix}"),
    ]


def test_authenticate_refuses_other_prefixes_unknown_and_revoked_tokens():
    token, plaintext = service_token_create(name="gateway")
    assert service_token_authenticate(plaintext) == token
    assert service_token_authenticate("hth_" + plaintext[4:]) is None
    assert service_token_authenticate(plaintext + "x") is None
    assert service_token_authenticate("") is None
    service_token_revoke(token=token)
    assert service_token_authenticate(plaintext) is None  # at once in the process that revoked it


def test_a_cached_kind_honours_a_revocation_from_another_process_within_its_cache_seconds():
    token, plaintext = service_token_create(name="gateway")
    now = timezone.now()
    assert service_token_authenticate(plaintext, now=now) == token
    # Revoked elsewhere: the row changes, this process's cache does not know.
    ServiceToken.objects.filter(pk=token.pk).update(revoked_at=now)
    assert service_token_authenticate(plaintext, now=now + timedelta(seconds=4)) == token
    assert service_token_authenticate(plaintext, now=now + timedelta(seconds=5)) is None


def test_last_used_is_written_at_most_once_a_minute(django_assert_num_queries):
    kind = TokenKind(model=ServiceToken, prefix="hsv_", action="service_token", audit=audit_record)
    token, plaintext = kind.create(tenant=None, actor=None, target=str, name="gateway")
    now = timezone.now()
    with django_assert_num_queries(2):  # the lookup and the write
        kind.authenticate(plaintext, now=now)
    with django_assert_num_queries(1):
        kind.authenticate(plaintext, now=now + timedelta(seconds=59))
    with django_assert_num_queries(2):
        kind.authenticate(plaintext, now=now + timedelta(seconds=61))
    token.refresh_from_db()
    assert token.last_used_at == now + timedelta(seconds=61)


def test_personal_token_loads_membership_tenant_plan_and_user_in_one_statement(django_assert_num_queries):
    membership = MembershipFactory(role="admin")
    token, plaintext = api_token_create(membership=membership, name="ci", actor=membership.user)
    ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    with django_assert_num_queries(1):
        got = api_token_authenticate(plaintext)
        assert got.pk == token.pk and got.name == "ci" and got.revoked_at is None
        assert got.membership.role == "admin" and got.membership.user.email == membership.user.email
        assert got.membership.tenant.slug == membership.tenant.slug
        assert got.membership.tenant.plan.slug == membership.tenant.plan.slug
    assert not got._state.adding  # as the ORM would have built it: saving updates, never inserts


def test_personal_token_is_refused_at_once_when_revoked_its_member_removed_or_its_user_deactivated():
    for end in ("revoke", "remove", "deactivate"):
        membership = MembershipFactory(role="member")
        token, plaintext = api_token_create(membership=membership, name="ci", actor=membership.user)
        assert api_token_authenticate(plaintext) is not None
        if end == "revoke":
            ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
        elif end == "remove":
            Membership.objects.filter(pk=membership.pk).delete()
        else:
            type(membership.user).objects.filter(pk=membership.user_id).update(is_active=False)
        assert api_token_authenticate(plaintext) is None, end
