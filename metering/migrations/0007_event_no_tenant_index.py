"""Usage events lose their index by tenant: reads go through the roll-ups, and the index cost every event an entry."""

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('metering', '0006_rollup_no_db_foreign_keys'),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='usageevent',
            name='usageevent_tenant_ts_idx',
        ),
    ]
