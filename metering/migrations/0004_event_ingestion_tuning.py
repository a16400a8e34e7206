"""Ingestion tuning: no per-row foreign-key checks on usage events; on PostgreSQL, byte-order event ids."""

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models


def event_id_collation_c(apps, schema_editor):
    # memcmp comparisons in the unique index instead of the locale's rules; PostgreSQL only (SQLite has no "C").
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute('ALTER TABLE metering_usageevent ALTER COLUMN event_id TYPE varchar(128) COLLATE "C"')


def event_id_collation_default(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute('ALTER TABLE metering_usageevent ALTER COLUMN event_id TYPE varchar(128) '
                              'COLLATE "default"')


class Migration(migrations.Migration):

    dependencies = [
        ('metering', '0003_rollup_storage_parameters'),
        ('tenants', '0002_default_plans'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.RunPython(event_id_collation_c, event_id_collation_default),
        migrations.AlterField(
            model_name='usageevent',
            name='actor',
            field=models.ForeignKey(blank=True, db_constraint=False, db_index=False, help_text='Corrections: the staff member.', null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL),
        ),
        migrations.AlterField(
            model_name='usageevent',
            name='meter',
            field=models.ForeignKey(db_constraint=False, db_index=False, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='metering.meter'),
        ),
        migrations.AlterField(
            model_name='usageevent',
            name='tenant',
            field=models.ForeignKey(db_constraint=False, db_index=False, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to='tenants.tenant'),
        ),
    ]
