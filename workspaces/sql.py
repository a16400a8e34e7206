"""The open's hot-path SQL: server-side prepared statements, and models built from hand-written rows.

Django binds parameters on the client, so PostgreSQL plans every statement again: 0.3 ms for the open's
lookup and 0.5 ms for the claim here, more than executing them (0.1 and 0.2 ms). A statement run through
`fetchone(..., prepared=True)` is planned once per connection. `WORKSPACES_PREPARED_SQL=false` turns that
off (for a transaction-pooling PgBouncer older than 1.21, which cannot keep prepared statements).
"""
import psycopg
from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import signals
from django.db.models.base import ModelState

# Only explicit prepare=True prepares: the ORM's client-binding cursors never prepare anyway.
_NEVER_AUTOMATICALLY = 2**31 - 1


class _PreparedCursor(psycopg.Cursor):
    def execute(self, query, params=None, *, prepare=None, binary=None):
        return super().execute(query, params, prepare=True, binary=binary)


def _prepared(db, prepared):
    return prepared and db.vendor == "postgresql" and getattr(settings, "WORKSPACES_PREPARED_SQL", True)


def _raw_connection(db):
    db.close_if_health_check_failed()
    db.ensure_connection()
    db.validate_thread_sharing()
    db.validate_no_broken_transaction()
    raw = db.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = _NEVER_AUTOMATICALLY
    return raw


def fetchone(sql, params, *, prepared=True):
    """Run one statement and return its first row (or None)."""
    db = connections[DEFAULT_DB_ALIAS]  # once: each attribute of `connection` is a lookup in a context-local
    if not _prepared(db, prepared):
        with db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()
    if db.queries_logged or db.execute_wrappers:
        # Through Django's cursor wrapper, so query capture (tests, DEBUG) and execute wrappers see it.
        with db.wrap_database_errors:
            cursor = _PreparedCursor(_raw_connection(db))
        with db.make_debug_cursor(cursor) if db.queries_logged else db.make_cursor(cursor) as wrapped:
            wrapped.execute(sql, params)
            row = wrapped.fetchone()
        if db.queries_logged and db.queries_log and db.queries_log[-1]["sql"] is None:
            db.queries_log[-1]["sql"] = db.ops.compose_sql(sql, params)  # Django renders client-bound SQL only
        return row
    with db.wrap_database_errors:  # database errors become django.db errors (IntegrityError, ...)
        with _PreparedCursor(_raw_connection(db)) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()


class Columns:
    """All concrete columns of a model, as `alias.column` for a SELECT, and the row slice back to an instance.

    Generated from the model's fields, so a new field is read without touching the SQL; field converters
    (JSONField) run as the ORM would run them.
    """

    def __init__(self, model, alias):
        self.model, self.alias = model, alias
        self.fields = list(model._meta.concrete_fields)
        self.names = [f.attname for f in self.fields]
        self.sql = ", ".join(f'{alias}."{f.column}"' for f in self.fields)
        self._converters = None
        self._plain = None

    def __len__(self):
        return len(self.fields)

    def build(self, values):
        if self._converters is None:
            self._converters = [
                (i, [*f.get_db_converters(connection), *connection.ops.get_db_converters(f.get_col(self.alias))], f)
                for i, f in enumerate(self.fields)
            ]
            self._converters = [(i, convs, f) for i, convs, f in self._converters if convs]
        if self._converters:
            values = list(values)
            for i, convs, field in self._converters:
                expression = field.get_col(self.alias)
                for convert in convs:
                    values[i] = convert(values[i], expression, connection)
        if self._plain is None:
            self._plain = not (signals.pre_init.has_listeners(self.model)
                               or signals.post_init.has_listeners(self.model))
        if not self._plain:
            return self.model.from_db(connection.alias, self.names, values)
        # What from_db() makes, without Model.__init__'s per-field loop (no init signal listens to this model).
        obj = self.model.__new__(self.model)
        obj.__dict__.update(zip(self.names, values, strict=True))
        state = obj._state = ModelState()
        state.adding, state.db = False, connection.alias
        return obj
