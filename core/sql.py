"""Models built from hand-written SQL: whole-model SELECT column lists from `_meta`, and the one place that touches
Django's internal model state (`_state`, skipping `Model.__init__`) to make instances from rows.

The statements themselves run prepared through `config.db.fetchone`.
"""
from django.db import DEFAULT_DB_ALIAS, connection
from django.db.models import signals
from django.db.models.base import ModelState


def loaded(instance_or_model, values=None, *, using=DEFAULT_DB_ALIAS):
    """An instance that Django treats as a row of database `using`: saving it UPDATEs, its relations load from there.

    The ORM sets this state itself when it reads or inserts a row; a hand-written statement that returned or wrote
    the row must set it instead, and this is the only code that does (it relies on Django's internal ModelState):
    - `loaded(instance)` marks an instance built with `Model(...)` from such a row, and returns it;
    - `loaded(Model, values)`, `values` a dict or (attname, value) pairs, builds one without `Model.__init__` (its
      per-field loop costs more than the statement on the open's path), as `Model.from_db` would. Only for a model
      no pre_init/post_init signal listens to: they would not run.
    """
    if isinstance(instance_or_model, type):
        instance = instance_or_model.__new__(instance_or_model)
        instance.__dict__.update(values)
        instance._state = ModelState()
    else:
        instance = instance_or_model
    instance._state.adding, instance._state.db = False, using
    return instance


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
        return loaded(self.model, zip(self.names, values, strict=True), using=connection.alias)
