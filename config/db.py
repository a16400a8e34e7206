"""Server-side bound, prepared statements on Django's PostgreSQL connection, for the few hot-path statements.

Django binds parameters on the client, so PostgreSQL parses and plans every statement again (0.3 ms for the open's
lookup, 0.5 ms for the claim, about 3 % of the ingestion statement's time), and an array parameter is spelt out as
text. A statement run through `fetchone()` or `cursor()` is bound on the server (binary arrays) and prepared once per
connection. `DATABASE_PREPARED_STATEMENTS=false` keeps the server-side binding but prepares nothing, for a
transaction-pooling PgBouncer older than 1.21 (which loses prepared statements between transactions).
"""
import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections
from psycopg.types.numeric import Int8BinaryDumper

from core import telemetry

# Django sets the connection's prepare_threshold to None, which forbids even an explicit prepare=True. A threshold no
# statement reaches lets explicit requests through while Django's own (client-binding) cursors never prepare.
_NEVER_AUTOMATICALLY = 2**31 - 1


class _ServerCursor(psycopg.Cursor):
    """Binds on the server; prepares every statement it runs when preparation is on."""

    def __init__(self, connection, *, prepare: bool, int8: bool):
        super().__init__(connection)
        self._prepare = prepare
        if int8:
            # Integers as int8 whatever their size: one parameter signature, hence one prepared statement (psycopg
            # would pick int2, int4 or int8 arrays by the largest value), and no array casts in PostgreSQL.
            self.adapters.register_dumper(int, Int8BinaryDumper)

    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=self._prepare, binary=binary)


def _preparing() -> bool:
    return getattr(settings, "DATABASE_PREPARED_STATEMENTS", True)


def _raw_connection(db):
    """The psycopg connection under `db`, opened and checked as Django's own cursor() would."""
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_thread_sharing()
    db.validate_no_broken_transaction()
    raw = db.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = _NEVER_AUTOMATICALLY
    return raw


class _LoggedSQL:
    """Django's query log renders client-bound SQL only (a server-bound one shows as `$1` placeholders, a prepared one
    as None): log the statement with its parameters instead."""

    def __init__(self, db, wrapped):
        self.db, self.wrapped = db, wrapped

    def __getattr__(self, name):
        return getattr(self.wrapped, name)

    def __iter__(self):
        return iter(self.wrapped)

    def execute(self, sql, params=None):
        result = self.wrapped.execute(sql, params)
        log = self.db.queries_log
        if log:
            log[-1]["sql"] = self.db.ops.compose_sql(sql, params)
        return result


class cursor:
    """`with cursor() as c:` a PostgreSQL cursor of the default connection that binds on the server and prepares
    what it runs (see the module), wrapped as Django wraps its own: query log, execute wrappers, and database
    errors as `django.db` errors. `int8=True` sends every integer bound as binary (`%b`) as int8: one signature
    for integer arrays."""

    def __init__(self, *, int8: bool = False):
        self.db = connections[DEFAULT_DB_ALIAS]
        self.int8 = int8
        self.wrapped = None

    def __enter__(self):
        db = self.db
        with db.wrap_database_errors:
            raw = _ServerCursor(_raw_connection(db), prepare=_preparing(), int8=self.int8)
        self.wrapped = db.make_debug_cursor(raw) if db.queries_logged else db.make_cursor(raw)
        return _LoggedSQL(db, self.wrapped) if db.queries_logged else self.wrapped

    def __exit__(self, *exc):
        self.wrapped.close()
        return False


def fetchone(sql, params):
    """Run one statement, prepared, and return its first row (or None). With no query log and no execute wrapper it
    skips Django's cursor wrapper (the open's path)."""
    db = connections[DEFAULT_DB_ALIAS]  # once: each attribute of `connection` is a lookup in a context-local
    # Its own span: the psycopg instrumentation sees only the cursors Django makes (core.telemetry).
    with telemetry.db_span(sql):
        if db.queries_logged or db.execute_wrappers:
            with cursor() as wrapped:
                wrapped.execute(sql, params)
                return wrapped.fetchone()
        with db.wrap_database_errors:  # database errors become django.db errors (IntegrityError, ...)
            with _ServerCursor(_raw_connection(db), prepare=_preparing(), int8=False) as raw:
                raw.execute(sql, params)
                return raw.fetchone()
