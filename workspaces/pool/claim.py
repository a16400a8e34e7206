"""The claim: one statement that takes a WARM container (FOR UPDATE SKIP LOCKED), alone or with the Session it opens."""
from django.db import connection, transaction

from config import db
from core import sql
from workspaces.models import Container, Node, Session
from workspaces.pool import health, placement

State = Container.State


# The states are literals, not parameters: a prepared statement then still uses the partial index on WARM rows.
# RETURNING every column (from the model's fields): the claimed Container is a whole row, whatever fields it gains.
# The node is joined under its table's own name, which the health rule's SQL names (a node that does not answer
# hands out no container: it may no longer run).
_CONTAINER = sql.Columns(Container, "u")
_N = Node._meta.db_table
# The claimed container's node comes back with it (every column, from the model's fields): the open needs its engine
# (locality, runtime) at once, and a lazy `container.node` would cost one more round trip per open (0.5-0.7 ms here).
_NODE = sql.Columns(Node, "n")
_CLAIM_SQL = f"""UPDATE {Container._meta.db_table} u
    SET state = '{State.CLAIMED.value}', claimed_at = %s, updated_at = %s
    WHERE id = (
        SELECT c.id FROM {Container._meta.db_table} c JOIN {_N} ON {_N}.id = c.node_id
        WHERE c.template_id = %s AND c.state = '{State.WARM.value}' AND {_N}.enabled AND NOT {_N}.draining
            AND {health.HEALTHY_SQL}
            AND c.node_id NOT IN ({placement.FAIR_SHARE_FULL_NODES_SQL})
        ORDER BY c.id LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING {_CONTAINER.sql}"""
_CLAIM_WITH_NODE_SQL = f"""WITH claimed AS ({_CLAIM_SQL})
    SELECT claimed.*, {_NODE.sql} FROM claimed JOIN {_N} n ON n.id = claimed.node_id"""


def single_statement_claims():
    """Outside a transaction the claim and its session can be one statement (see below)."""
    return not transaction.get_connection().in_atomic_block


def container_claim_for_session(*, template, session, now):
    """Claim a WARM container and insert `session` on it in ONE statement (autocommit: one transaction).

    Two data-modifying CTEs: the UPDATE takes the row with FOR UPDATE SKIP LOCKED; the INSERT adds the
    session only if a row was taken. A unique violation (the workspace already has a live session) fails
    the whole statement, so the container stays WARM. Returns the CLAIMED Container or None.
    """
    values = [field.get_db_prep_save(getattr(session, field.attname), connection) for field in _SESSION_FIELDS]
    row = db.fetchone(_CLAIM_FOR_SESSION_SQL, [*_claim_params(template, session.tenant_id, now), *values])
    return _claimed_container(row, template)


# Every column of Session but the container (the claimed row's id), from the model's fields and with the session's
# values, so a field added to Session is inserted without touching this statement. Each value is cast to its
# column's type: a None (ended_at) would otherwise reach PostgreSQL untyped, which INSERT ... SELECT takes for text.
# The egress marks are the claimed row's too: its counter's baseline (workspaces.egress.initial_marks, in SQL).
_SESSION_FIELDS = [field for field in Session._meta.concrete_fields if field.attname != "container_id"]
_BASELINE = Container._meta.get_field("egress_baseline_bytes").column


def _insert_value(field):
    cast = f"%s::{field.db_type(connection)}"
    if field.attname != "egress_marks":
        return cast
    return (f"CASE WHEN claimed.{_BASELINE} IS NULL THEN {cast} "
            f"ELSE jsonb_build_object('if:' || claimed.id, claimed.{_BASELINE}) END")


_CLAIM_FOR_SESSION_SQL = f"""
    WITH claimed AS ({_CLAIM_SQL}),
    opened AS (
        INSERT INTO {Session._meta.db_table} ({", ".join(f'"{f.column}"' for f in _SESSION_FIELDS)}, "container_id")
        SELECT {", ".join(_insert_value(f) for f in _SESSION_FIELDS)}, claimed.id FROM claimed
        RETURNING container_id
    )
    SELECT claimed.*, {_NODE.sql} FROM claimed JOIN opened ON opened.container_id = claimed.id
        JOIN {_N} n ON n.id = claimed.node_id"""


def _claimed_container(row, template):
    if row is None:
        return None
    container = _CONTAINER.build(row[:len(_CONTAINER)])
    Container.template.field.set_cached_value(container, template)
    Container.node.field.set_cached_value(container, _NODE.build(row[len(_CONTAINER):]))
    return container


def container_claim(*, template, tenant, now):
    """Inside the caller's transaction: take one WARM container of `template` (CLAIMED) for `tenant`, or None.

    One statement: lock the oldest WARM row of a usable, healthy node where the tenant stays within its fair share
    (placement.FAIR_SHARE_FULL_NODES_SQL) with FOR UPDATE SKIP LOCKED (so concurrent claims take different rows without
    waiting), mark it CLAIMED, return it.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("container_claim must run inside the transaction that creates the session")
    return _claimed_container(db.fetchone(_CLAIM_WITH_NODE_SQL, _claim_params(template, tenant.pk, now)), template)


def _claim_params(template, tenant_id, now):
    return [now, now, template.pk, *health.healthy_params(),
            *placement.fair_share_params(tenant_id=tenant_id, template=template)]
