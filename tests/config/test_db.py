"""config.db: server-side bound, prepared statements on Django's PostgreSQL connection (real PostgreSQL)."""
import pytest
from django.db import IntegrityError, connection
from django.test.utils import CaptureQueriesContext

from config import db

pytestmark = pytest.mark.django_db

MARKED = "SELECT %s::int + 1 AS hearth_db_test_{}"


def prepared_count(marker):
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s", [f"%{marker}%"])
        return cursor.fetchone()[0]


def test_fetchone_prepares_once_per_connection_and_returns_the_row():
    sql = MARKED.format("once")
    assert [db.fetchone(sql, [n]) for n in (1, 2, 3)] == [(2,), (3,), (4,)]
    assert prepared_count("hearth_db_test_once") == 1


def test_turned_off_it_binds_on_the_server_but_prepares_nothing(settings):
    settings.DATABASE_PREPARED_STATEMENTS = False
    sql = MARKED.format("off")
    assert db.fetchone(sql, [41]) == (42,)
    with db.cursor() as cursor:
        cursor.execute(sql, [1])
        assert cursor.fetchone() == (2,)
        # Bound on the server: the parameter reaches PostgreSQL typed, not spelt into the text.
        cursor.execute("SELECT pg_typeof(%s)::text", [[1, 2]])
        assert cursor.fetchone()[0] != "text"
    assert prepared_count("hearth_db_test_off") == 0


def test_int8_cursor_sends_every_binary_integer_as_int8():
    with db.cursor(int8=True) as cursor:
        cursor.execute("SELECT pg_typeof(%b)::text, pg_typeof(%b)::text", [[1, 2], 2**40])
        assert cursor.fetchone() == ("bigint[]", "bigint")
    with db.cursor() as cursor:
        cursor.execute("SELECT pg_typeof(%b)::text", [[1, 2]])
        assert cursor.fetchone()[0] == "smallint[]"


def test_the_query_log_shows_the_statement_with_its_parameters():
    """Django renders only client-bound SQL into its log; tests and DEBUG must still see what ran."""
    with CaptureQueriesContext(connection) as captured:
        db.fetchone(MARKED.format("logged"), [7])
        with db.cursor() as cursor:
            cursor.execute(MARKED.format("logged_cursor"), [8])
    statements = [q["sql"] for q in captured.captured_queries]
    assert any("hearth_db_test_logged " in s.replace("\n", " ") + " " and "7" in s for s in statements), statements
    assert any("hearth_db_test_logged_cursor" in s and "8" in s for s in statements), statements


def test_execute_wrappers_see_the_statement():
    seen = []

    def wrapper(execute, sql, params, many, context):
        seen.append(sql)
        return execute(sql, params, many, context)

    with connection.execute_wrapper(wrapper):
        assert db.fetchone(MARKED.format("wrapped"), [1]) == (2,)
    assert seen == [MARKED.format("wrapped")]


def test_database_errors_are_djangos():
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE hearth_db_test_unique (id int PRIMARY KEY)")
    db.fetchone("INSERT INTO hearth_db_test_unique VALUES (%s) RETURNING id", [1])
    with pytest.raises(IntegrityError):
        db.fetchone("INSERT INTO hearth_db_test_unique VALUES (%s) RETURNING id", [1])
