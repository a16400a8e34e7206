"""Personal API tokens (`hth_…`), a kind of core.tokens, and the lookup every API request makes: the token, its
membership, tenant, plan and user in one prepared statement."""
from functools import cache

from django.contrib.auth import get_user_model

from config.db import fetchone
from core.sql import Columns
from core.tokens import TokenKind
from tenants.audit import audit_record
from tenants.models import ApiToken, Membership, Plan, Tenant

TOKEN_PREFIX = "hth_"


@cache
def _lookup_statement():
    """The SQL and each model's columns in the row. Columns come from the models' _meta (core.sql), so a new column
    is loaded without touching this; built on first use, when the models are ready."""
    layout = [Columns(model, alias) for alias, model in
              [("t", ApiToken), ("m", Membership), ("te", Tenant), ("p", Plan), ("u", get_user_model())]]
    user_table = get_user_model()._meta.db_table
    sql = (
        f"SELECT {', '.join(columns.sql for columns in layout)} FROM {ApiToken._meta.db_table} t"
        f" JOIN {Membership._meta.db_table} m ON m.id = t.membership_id"
        f" JOIN {Tenant._meta.db_table} te ON te.id = m.tenant_id"
        f" JOIN {Plan._meta.db_table} p ON p.id = te.plan_id"
        f' JOIN "{user_table}" u ON u.id = m.user_id'
        " WHERE t.token_hash = %s AND t.revoked_at IS NULL AND u.is_active"
    )
    return sql, layout


def _instances(row, layout):
    """Model instances from consecutive slices of `row`, as the ORM builds them (field converters included)."""
    start = 0
    for columns in layout:
        yield columns.build(row[start:start + len(columns)])
        start += len(columns)


def _token_with_membership(digest):
    """The live token of an active user, with membership, tenant, plan and user loaded; or None. One round trip,
    planned once per connection: the ORM spent more compiling this join than PostgreSQL spends running it."""
    sql, layout = _lookup_statement()
    row = fetchone(sql, [digest])
    if row is None:
        return None
    token, membership, tenant, plan, user = _instances(row, layout)
    tenant.plan = plan
    membership.tenant, membership.user = tenant, user
    token.membership = membership
    return token


# No cache: the lookup is one prepared statement, so a revocation, a removed member or a deactivated user is refused
# on the very next request in every process.
API_TOKENS = TokenKind(model=ApiToken, prefix=TOKEN_PREFIX, action="api_token", audit=audit_record,
                       lookup=_token_with_membership)


def api_token_authenticate(plaintext):
    """The token (its membership, tenant, plan and user loaded) if valid and its user active, else None."""
    return API_TOKENS.authenticate(plaintext)
