"""The audit trail keeps the tenant's primary key beside its slug: a slug is reused after offboarding, a key never is."""
from django.db import migrations, models
from django.db.models import F


def backfill(apps, schema_editor):
    # Rows of offboarded tenants (tenant already NULL) keep only their slug: their key is gone with the row.
    apps.get_model("tenants", "AuditLog").objects.filter(tenant__isnull=False).update(tenant_key=F("tenant_id"))


class Migration(migrations.Migration):
    dependencies = [("tenants", "0004_plan_isolation")]

    operations = [
        migrations.AddField(
            model_name="auditlog",
            name="tenant_key",
            field=models.BigIntegerField(blank=True, db_index=True, null=True),
        ),
        migrations.RunPython(backfill, migrations.RunPython.noop),
    ]
