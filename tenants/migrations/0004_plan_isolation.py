"""Plan.internet_access and the plan's resource shares and caps, with the defaults for the default plans: Free through
the proxy at a quarter of the normal CPU weight and capped, the paid plans open with rising weights."""
from django.db import migrations, models

DEFAULTS = {
    # slug: internet access, CPU weight, I/O weight, cpus cap, memory cap, pids cap
    "free": ("proxy", 256, 100, 1, 2048, 512),
    "starter": ("open", 512, 250, None, None, None),
    "pro": ("open", 1024, 500, None, None, None),
    "team": ("open", 1024, 500, None, None, None),
    "enterprise": ("open", 2048, 1000, None, None, None),
}


def defaults(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    for slug, (access, cpu_weight, io_weight, cpus, memory_mb, pids_limit) in DEFAULTS.items():
        Plan.objects.filter(slug=slug).update(internet_access=access, cpu_weight=cpu_weight, io_weight=io_weight,
                                              cpus=cpus, memory_mb=memory_mb, pids_limit=pids_limit)


class Migration(migrations.Migration):
    dependencies = [("tenants", "0003_billing_state")]

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
        migrations.AddField(
            model_name="plan",
            name="cpu_weight",
            field=models.PositiveIntegerField(
                default=1024, help_text="Relative CPU share under contention (cgroup cpu.shares); 1024 is normal."),
        ),
        migrations.AddField(
            model_name="plan",
            name="io_weight",
            field=models.PositiveSmallIntegerField(
                default=500,
                help_text="Relative block-I/O share, 10–1000 (needs an I/O scheduler with weights, e.g. BFQ)."),
        ),
        migrations.AddField(
            model_name="plan",
            name="cpus",
            field=models.DecimalField(blank=True, decimal_places=2, max_digits=5, null=True,
                                      help_text="CPU quota cap in cores; empty: the template's."),
        ),
        migrations.AddField(
            model_name="plan",
            name="memory_mb",
            field=models.PositiveIntegerField(blank=True, null=True, help_text="Memory cap; empty: the template's."),
        ),
        migrations.AddField(
            model_name="plan",
            name="pids_limit",
            field=models.PositiveIntegerField(blank=True, null=True, help_text="Process cap; empty: the template's."),
        ),
        migrations.RunPython(defaults, migrations.RunPython.noop),
    ]
