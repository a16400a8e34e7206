"""Plan.internet_access, with the defaults: Free through the proxy, the paid plans open."""
from django.db import migrations, models


def defaults(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    Plan.objects.filter(slug__in=["starter", "pro", "team", "enterprise"]).update(internet_access="open")


class Migration(migrations.Migration):
    dependencies = [("tenants", "0002_default_plans")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="internet_access",
            field=models.CharField(
                choices=[("none", "None"), ("proxy", "Proxy"), ("open", "Open")], default="proxy", max_length=8,
                help_text="From a workspace: none, through the egress proxy (not built yet: as none), or open. "
                          "Private ranges, the host and other workspaces are never reachable.",
            ),
        ),
        migrations.RunPython(defaults, migrations.RunPython.noop),
    ]
