# Existing tokens get empty scopes: they write nothing until staff give them meters (issue 12, item 3).

import django.contrib.postgres.fields
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('metering', '0007_event_no_tenant_index'),
    ]

    operations = [
        migrations.AddField(
            model_name='servicetoken',
            name='meters',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.SlugField(max_length=64), blank=True, default=list, help_text='Meter slugs this token may write (and declare). Empty: none.', size=None),
        ),
        migrations.AddField(
            model_name='servicetoken',
            name='tenant_slugs',
            field=django.contrib.postgres.fields.ArrayField(base_field=models.SlugField(), blank=True, default=list, help_text='Tenant slugs it may write for. Empty: every tenant.', size=None, verbose_name='tenants'),
        ),
    ]
