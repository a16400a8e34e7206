"""The fixed warm_target becomes the warm pool's minimum (values kept), with a maximum the demand rule stays under;
the pool tick's last decision."""
from django.db import migrations, models


def warm_max_from_min(apps, schema_editor):
    # max(minimum, 10), but never above the template's own cap on containers (and never below the minimum).
    Template = apps.get_model("workspaces", "WorkspaceTemplate")
    for template in Template.objects.all():
        template.warm_max = max(template.warm_min, min(10, template.max_containers))
        template.save(update_fields=["warm_max"])


class Migration(migrations.Migration):

    dependencies = [
        ('workspaces', '0011_gateway_egress_cursor'),
    ]

    operations = [
        migrations.RenameField(model_name='workspacetemplate', old_name='warm_target', new_name='warm_min'),
        migrations.AlterField(
            model_name='workspacetemplate',
            name='warm_min',
            field=models.PositiveSmallIntegerField(default=2, help_text='WARM containers kept per node, whatever the demand.', verbose_name='warm minimum'),
        ),
        migrations.AddField(
            model_name='workspacetemplate',
            name='warm_max',
            field=models.PositiveSmallIntegerField(default=10, help_text='WARM containers per node at most, whatever the demand.', verbose_name='warm maximum'),
        ),
        migrations.RunPython(warm_max_from_min, migrations.RunPython.noop),
        migrations.AddField(
            model_name='workspacetemplate',
            name='pool_target',
            field=models.PositiveSmallIntegerField(blank=True, editable=False, help_text="WARM containers wanted per node now (the demand rule's).", null=True),
        ),
        migrations.AddField(
            model_name='workspacetemplate',
            name='pool_reason',
            field=models.CharField(blank=True, editable=False, max_length=300),
        ),
        migrations.AddField(
            model_name='workspacetemplate',
            name='pool_decided_at',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name='workspacetemplate',
            name='pool_above_since',
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
    ]
