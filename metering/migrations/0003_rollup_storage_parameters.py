"""Roll-up rows are updated by every batch: leave room on each page so updates stay HOT, and vacuum them often."""
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("metering", "0002_default_meters")]
    operations = [
        migrations.RunSQL(
            "ALTER TABLE metering_usagerollup SET (fillfactor = 30, autovacuum_vacuum_scale_factor = 0, "
            "autovacuum_vacuum_threshold = 5000, autovacuum_vacuum_cost_delay = 0)",
            "ALTER TABLE metering_usagerollup RESET (fillfactor, autovacuum_vacuum_scale_factor, "
            "autovacuum_vacuum_threshold, autovacuum_vacuum_cost_delay)",
        ),
    ]
