"""Models built from hand-written rows: the open's hot-path SELECTs read whole models without the ORM's compiler.

The statements themselves run prepared through `config.db.fetchone`.
"""
from django.db import connection
from django.db.models import signals
from django.db.models.base import ModelState


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
