"""The tenant's billing state (billing.subscriptions writes it), and dj-stripe's customers pointing at tenants.

A database migrated before DJSTRIPE_SUBSCRIBER_MODEL was "tenants.Tenant" has djstripe_customer.subscriber_id
referencing users; dj-stripe's own migration cannot notice the setting changed, so the constraint is moved here.
"""

import django.db.models.deletion
from django.db import migrations, models


SUBSCRIBER_FOREIGN_KEYS = """
SELECT con.conname, target.relname FROM pg_constraint con
JOIN pg_class source ON source.oid = con.conrelid
JOIN pg_class target ON target.oid = con.confrelid
JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = ANY(con.conkey)
WHERE con.contype = 'f' AND source.relname = 'djstripe_customer' AND a.attname = 'subscriber_id'
"""


def subscriber_references_tenants(apps, schema_editor):
    with schema_editor.connection.cursor() as cursor:
        cursor.execute(SUBSCRIBER_FOREIGN_KEYS)
        constraints = cursor.fetchall()
        if any(target == "tenants_tenant" for _, target in constraints):
            return
        # Customers linked to users mean nothing to tenants: unlink them (none exist before billing ran).
        cursor.execute("UPDATE djstripe_customer SET subscriber_id = NULL")
        for name, _ in constraints:
            cursor.execute(f'ALTER TABLE djstripe_customer DROP CONSTRAINT "{name}"')
        cursor.execute(
            "ALTER TABLE djstripe_customer ADD CONSTRAINT djstripe_customer_subscriber_id_fk_tenants_tenant_id "
            "FOREIGN KEY (subscriber_id) REFERENCES tenants_tenant (id) DEFERRABLE INITIALLY DEFERRED")


class Migration(migrations.Migration):

    dependencies = [
        ('tenants', '0002_default_plans'),
        ('djstripe', '0003_2_11'),
    ]

    operations = [
        migrations.AddField(
            model_name='tenant',
            name='current_period_end',
            field=models.DateTimeField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='tenant',
            name='payment_due_by',
            field=models.DateTimeField(blank=True, help_text='Past due: opens are refused (402) from this moment until it is paid.', null=True),
        ),
        migrations.AddField(
            model_name='tenant',
            name='pending_plan',
            field=models.ForeignKey(blank=True, help_text='A downgrade (or Free after a cancellation) that takes effect at the end of the period.', null=True, on_delete=django.db.models.deletion.PROTECT, related_name='+', to='tenants.plan'),
        ),
        migrations.AddField(
            model_name='tenant',
            name='subscription_id',
            field=models.CharField(blank=True, db_index=True, max_length=255),
        ),
        migrations.AddField(
            model_name='tenant',
            name='subscription_status',
            field=models.CharField(blank=True, help_text="Stripe's status; empty: none.", max_length=24),
        ),
        migrations.RunPython(subscriber_references_tenants, migrations.RunPython.noop),
    ]
