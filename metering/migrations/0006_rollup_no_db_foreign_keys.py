"""Ingestion tuning, second round: roll-ups without database-level foreign keys (as events), and each connection
takes event and roll-up ids a hundred at a time (ids stay unique; they are no longer in commit order)."""
import django.db.models.deletion
from django.db import migrations, models

_TABLES = ("metering_usageevent", "metering_usagerollup")


def id_cache(size):
    def run(apps, schema_editor):
        # nextval() per inserted row -- and per roll-up row only proposed to ON CONFLICT -- locked the sequence's
        # page each time; cached, it is a counter in the backend.
        if schema_editor.connection.vendor == "postgresql":
            for table in _TABLES:
                schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN id SET CACHE {size}")
    return run


class Migration(migrations.Migration):

    dependencies = [
        ('metering', '0005_event_id_one_index'),
        ('tenants', '0002_default_plans'),
    ]

    operations = [
        migrations.AlterField(
            model_name='usagerollup',
            name='meter',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT,
                                    related_name='+', to='metering.meter'),
        ),
        migrations.AlterField(
            model_name='usagerollup',
            name='tenant',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.CASCADE,
                                    related_name='+', to='tenants.tenant'),
        ),
        migrations.RunPython(id_cache(100), id_cache(1)),
    ]
