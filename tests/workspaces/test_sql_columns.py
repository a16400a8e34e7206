"""Hand-written SQL against the models: every statement names every column of the models it reads or writes, so a
field added to a model cannot be silently left out (the claim's INSERT once broke when Session gained a column)."""
import re
from datetime import timedelta

import pytest
from django.utils import timezone

from tenants.models import Plan, Tenant
from tests.factories import MembershipFactory
from workspaces import opening
from workspaces.models import Container, Node, Session, Workspace, WorkspaceTemplate
from workspaces.pool import claim

pytestmark = pytest.mark.django_db

# The claim's INSERT as it was written by hand before egress_bytes_metered existed: what the guard must catch.
_HAND_WRITTEN_INSERT = """INSERT INTO workspaces_session (id, tenant_id, workspace_id, user_id, container_id,
    cold_start, started_at, last_activity_at, ended_at, end_reason, metered_until) SELECT ..."""


def columns(model):
    return {field.column for field in model._meta.concrete_fields}


def inserted_columns(statement, model):
    """The column list of the statement's INSERT INTO the model's table."""
    match = re.search(rf"INSERT INTO {model._meta.db_table}\s*\(([^)]*)\)", statement)
    assert match, f"no INSERT INTO {model._meta.db_table} in the statement"
    return {name.strip().strip('"') for name in match.group(1).split(",")}


def selected_columns(statement, alias):
    """Every `alias."column"` the statement names (SELECT and RETURNING lists are generated in that form)."""
    return set(re.findall(rf'\b{alias}\."(\w+)"', statement))


def test_the_guard_catches_an_insert_that_misses_a_column():
    missing = columns(Session) - inserted_columns(_HAND_WRITTEN_INSERT, Session)
    assert missing == {"egress_bytes_metered", "egress_marks", "client_bytes_seen", "open_ms"}


def test_the_claims_insert_names_every_session_column():
    assert inserted_columns(claim._CLAIM_FOR_SESSION_SQL, Session) == columns(Session)


def test_the_claim_returns_every_container_column():
    returning = claim._CLAIM_SQL[claim._CLAIM_SQL.index("RETURNING"):]
    assert selected_columns(returning, "u") == columns(Container)


def test_the_opens_lookup_reads_every_column_of_its_models():
    statement = opening._open_lookup.sql
    for alias, model in (("w", Workspace), ("t", Tenant), ("p", Plan), ("tp", WorkspaceTemplate)):
        assert selected_columns(statement, alias) == columns(model), model.__name__


def test_a_session_claimed_in_one_statement_is_stored_and_returned_whole():
    """The claim writes every field of the Session as built, and hands back the Container as stored."""
    membership = MembershipFactory()
    template = WorkspaceTemplate.objects.order_by("pk").first()
    workspace = Workspace.objects.create(tenant=membership.tenant, owner=membership.user, template=template, name="sql")
    node = Node.objects.create(name="sql-columns", engine_url="unix:///nonexistent.sock", cpus=1, memory_mb=512,
                               max_containers=1)
    warm = Container.objects.create(node=node, template=template, state=Container.State.WARM, name="c-sql",
                                    address="127.0.0.1:1", slot_path="/nonexistent/c-sql", engine_id="e-sql")
    now = timezone.now()
    session = Session(tenant=membership.tenant, workspace=workspace, user=membership.user, cold_start=True,
                      started_at=now, last_activity_at=now, metered_until=now - timedelta(seconds=1),
                      egress_bytes_metered=7)

    container = claim.container_claim_for_session(template=template, session=session, now=now)

    stored = Container.objects.get(pk=warm.pk)
    assert container.pk == warm.pk and container.state == Container.State.CLAIMED
    for field in Container._meta.concrete_fields:
        assert getattr(container, field.attname) == getattr(stored, field.attname), field.name
    row = Session.objects.get(pk=session.pk)
    assert row.container_id == warm.pk
    for field in Session._meta.concrete_fields:
        if field.attname != "container_id":
            assert getattr(row, field.attname) == getattr(session, field.attname), field.name
