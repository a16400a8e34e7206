"""The ingestion statement's hand-written INSERTs name every column of UsageEvent and UsageRollup they must fill."""
import re

import pytest
from django.db.models import NOT_PROVIDED, AutoField, BigAutoField

from metering import ingestion
from metering.models import UsageEvent, UsageRollup

# Columns the INSERTs may leave out: the database fills them. A new column with a database default must still be
# added here on purpose, after checking that its default is what an ingested event or roll-up should get.
FILLED_BY_THE_DATABASE = {
    UsageEvent: {"id", "recorded_at"},
    UsageRollup: {"id"},
}
STATEMENTS = {"uniform": ingestion._INGEST_UNIFORM_SQL, "mixed": ingestion._INGEST_MIXED_SQL}


def _top_level_split(text):
    """`text` split at the commas outside parentheses (a SELECT list)."""
    parts, depth, start = [], 0, 0
    for position, char in enumerate(text):
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            parts.append(text[start:position].strip())
            start = position + 1
    parts.append(text[start:].strip())
    return parts


def insert_of(sql, table):
    """(the INSERT's column list, its SELECT list) for `table` in `sql`."""
    match = re.search(rf"INSERT INTO {table}\s*\(([^)]*)\)\s*SELECT\s+(.*?)\s+FROM\s", sql, re.S)
    assert match, f"no INSERT INTO {table} … SELECT … FROM in the statement"
    columns = [column.strip().strip('"') for column in match.group(1).split(",")]
    return columns, _top_level_split(match.group(2))


def model_columns(model):
    return {field.column for field in model._meta.concrete_fields}


def unlisted(model_columns, statement_columns, filled_by_the_database):
    """The model's columns that the statement neither writes nor may leave to the database."""
    return set(model_columns) - set(statement_columns) - set(filled_by_the_database)


@pytest.mark.parametrize("variant", STATEMENTS)
@pytest.mark.parametrize("model", [UsageEvent, UsageRollup], ids=lambda model: model.__name__)
def test_ingestion_insert_names_every_column_of_the_model(variant, model):
    columns, values = insert_of(STATEMENTS[variant], model._meta.db_table)
    assert unlisted(model_columns(model), columns, FILLED_BY_THE_DATABASE[model]) == set()
    assert set(columns) <= model_columns(model), "the statement names a column the model does not have"
    assert len(columns) == len(set(columns)) == len(values), (columns, values)


@pytest.mark.parametrize("model", [UsageEvent, UsageRollup], ids=lambda model: model.__name__)
def test_columns_left_to_the_database_really_have_a_database_default(model):
    fields = {field.column: field for field in model._meta.concrete_fields}
    for column in FILLED_BY_THE_DATABASE[model]:
        field = fields[column]
        assert isinstance(field, AutoField | BigAutoField) or field.db_default is not NOT_PROVIDED, column


def test_a_new_model_column_the_statement_does_not_know_fails_the_check():
    """The guard itself: a column added to (a copy of) the model's columns is reported, and one the database fills
    is reported too until it is listed."""
    columns, _ = insert_of(ingestion._INGEST_UNIFORM_SQL, UsageEvent._meta.db_table)
    grown = model_columns(UsageEvent) | {"billing_account_id"}
    assert unlisted(grown, columns, FILLED_BY_THE_DATABASE[UsageEvent]) == {"billing_account_id"}
    assert unlisted(grown, columns, FILLED_BY_THE_DATABASE[UsageEvent] | {"billing_account_id"}) == set()
    dropped = [column for column in columns if column != "reason"]
    assert unlisted(model_columns(UsageEvent), dropped, FILLED_BY_THE_DATABASE[UsageEvent]) == {"reason"}
