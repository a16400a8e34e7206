"""The cost model's one row of unit prices and fixed costs (CostRates), made with its defaults.

Numbered 0004 after reconciliation's 0003, built at the same time; it needs only 0002.
"""
from decimal import Decimal

import django.core.validators
from django.db import migrations, models


def load(apps, schema_editor):
    """The row with the field defaults (the issue's: $0.000024 per vCPU-second, $0.30 per GiB-month, $0.12 per GiB of
    egress, $30 a month for the warm pool); a row already there is left as staff set it."""
    apps.get_model("billing", "CostRates").objects.get_or_create(id=1)


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0003_reconciliation_gap'),
    ]

    operations = [
        migrations.CreateModel(
            name='CostRates',
            fields=[
                ('id', models.PositiveSmallIntegerField(default=1, editable=False, primary_key=True, serialize=False)),
                ('currency', models.CharField(default='usd', max_length=3)),
                ('vcpu_second', models.DecimalField(decimal_places=10, default=Decimal('0.000024'), help_text="A container-second costs the plan's CPU limit × this.", max_digits=18, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='per vCPU-second')),
                ('memory_gb_second', models.DecimalField(decimal_places=10, default=Decimal('0'), help_text="A container-second costs the plan's memory limit (GiB) × this; 0: memory is included in the vCPU price.", max_digits=18, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='per GiB-second of memory')),
                ('default_vcpus', models.DecimalField(decimal_places=2, default=Decimal('1'), help_text="For plans without a CPU limit (their containers get the template's: 1 by default).", max_digits=5, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='vCPUs when the plan sets none')),
                ('default_memory_mb', models.PositiveIntegerField(default=1024, help_text="For plans without a memory limit (their containers get the template's: 1024 by default).", verbose_name='memory (MiB) when the plan sets none')),
                ('storage_gb_month', models.DecimalField(decimal_places=6, default=Decimal('0.30'), help_text="Storage is the mean of the month's daily peaks.", max_digits=14, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='per GiB-month of storage')),
                ('egress_gb', models.DecimalField(decimal_places=6, default=Decimal('0.12'), max_digits=14, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='per GiB of egress')),
                ('warm_pool_month', models.DecimalField(decimal_places=2, default=Decimal('30.00'), help_text='The warm containers kept waiting for claims (two cost about 20–40 a month).', max_digits=10, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='warm pool, per month')),
                ('file_storage_month', models.DecimalField(decimal_places=2, default=Decimal('0'), help_text='The storage host or volume, whatever tenants store.', max_digits=10, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='file storage, per month')),
                ('database_month', models.DecimalField(decimal_places=2, default=Decimal('0'), max_digits=10, validators=[django.core.validators.MinValueValidator(Decimal('0'))], verbose_name='database, per month')),
                ('updated_at', models.DateTimeField(auto_now=True)),
            ],
            options={
                'verbose_name': 'costs and margins',
                'verbose_name_plural': 'costs and margins',
                'constraints': [models.CheckConstraint(condition=models.Q(('id', 1)), name='costrates_singleton')],
            },
        ),
        migrations.RunPython(load, migrations.RunPython.noop),
    ]
