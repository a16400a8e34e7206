"""The claim: one statement that takes a WARM container (FOR UPDATE SKIP LOCKED), alone or with the Session it opens."""
from django.db import transaction

from config import db
from core import sql
from workspaces.models import Container, Node, Session

State = Container.State


# The states are literals, not parameters: a prepared statement then still uses the partial index on WARM rows.
_CLAIM_SQL = f"""UPDATE {Container._meta.db_table} SET state = '{State.CLAIMED.value}', claimed_at = %s, updated_at = %s
    WHERE id = (
        SELECT c.id FROM {Container._meta.db_table} c JOIN {Node._meta.db_table} n ON n.id = c.node_id
        WHERE c.template_id = %s AND c.state = '{State.WARM.value}' AND n.enabled AND NOT n.draining
        ORDER BY c.id LIMIT 1
        FOR UPDATE OF c SKIP LOCKED
    )
    RETURNING id, node_id, slot_path, address, name, engine_id"""


def single_statement_claims():
    """Outside a transaction the claim and its session can be one statement (see below)."""
    return not transaction.get_connection().in_atomic_block


def container_claim_for_session(*, template, session, now):
    """Claim a WARM container and insert `session` on it in ONE statement (autocommit: one transaction).

    Two data-modifying CTEs: the UPDATE takes the row with FOR UPDATE SKIP LOCKED; the INSERT adds the
    session only if a row was taken. A unique violation (the workspace already has a live session) fails
    the whole statement, so the container stays WARM. Returns the CLAIMED Container or None.
    """
    row = db.fetchone(_CLAIM_FOR_SESSION_SQL, [now, now, template.pk, session.pk, session.tenant_id,
                                                 session.workspace_id, session.user_id, session.cold_start, now,
                                                 now, now])
    return _claimed_container(row, template, now)


_CLAIM_FOR_SESSION_SQL = f"""
    WITH claimed AS ({_CLAIM_SQL}),
    opened AS (
        INSERT INTO {Session._meta.db_table} (id, tenant_id, workspace_id, user_id, container_id, cold_start,
                                              started_at, last_activity_at, ended_at, end_reason, metered_until)
        SELECT %s, %s, %s, %s, claimed.id, %s, %s, %s, NULL, '', %s FROM claimed
        RETURNING container_id
    )
    SELECT claimed.id, claimed.node_id, claimed.slot_path, claimed.address, claimed.name, claimed.engine_id
    FROM claimed JOIN opened ON opened.container_id = claimed.id"""


def _claimed_container(row, template, now):
    if row is None:
        return None
    container = Container(pk=row[0], node_id=row[1], template_id=template.pk, slot_path=row[2], address=row[3],
                          name=row[4], engine_id=row[5], state=State.CLAIMED, claimed_at=now)
    container.template = template
    return sql.loaded(container)


def container_claim(*, template, now):
    """Inside the caller's transaction: take one WARM container of `template` (CLAIMED), or None.

    One statement: lock the oldest WARM row of a usable node with FOR UPDATE SKIP LOCKED (so concurrent claims
    take different rows without waiting), mark it CLAIMED, return it.
    """
    if not transaction.get_connection().in_atomic_block:
        raise RuntimeError("container_claim must run inside the transaction that creates the session")
    return _claimed_container(db.fetchone(_CLAIM_SQL, [now, now, template.pk]), template, now)
