"""Usage event ids keep one index: the unique one. The varchar_pattern_ops copy Django adds to unique CharFields
cost every insert an index entry and served no query."""
from django.db import migrations, models


def like_index_drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return  # SQLite has no such index
    with schema_editor.connection.cursor() as cursor:
        cursor.execute("""
            SELECT indexname FROM pg_indexes
            WHERE tablename = 'metering_usageevent' AND indexdef LIKE '%varchar_pattern_ops%'""")
        for (name,) in cursor.fetchall():
            schema_editor.execute(f'DROP INDEX IF EXISTS "{name}"')


def like_index_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute('CREATE INDEX IF NOT EXISTS "metering_usageevent_event_id_e98737e9_like" '
                              "ON metering_usageevent (event_id varchar_pattern_ops)")


class Migration(migrations.Migration):

    dependencies = [("metering", "0004_event_ingestion_tuning")]

    operations = [
        # The unique index stays as it is (PostgreSQL named it metering_usageevent_event_id_key); only Django's
        # state moves it from the field to a named constraint, so that no second index is ever created again.
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterField(model_name="usageevent", name="event_id", field=models.CharField(max_length=128)),
                migrations.AddConstraint(
                    model_name="usageevent",
                    constraint=models.UniqueConstraint(fields=("event_id",), name="metering_usageevent_event_id_key"),
                ),
            ],
            database_operations=[migrations.RunPython(like_index_drop, like_index_create)],
        ),
    ]
