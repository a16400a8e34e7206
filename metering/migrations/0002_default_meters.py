"""The platform's meters and one example custom meter. Staff edit them in admin afterwards; this runs once."""
from django.db import migrations

DEFAULT_METERS = [
    # slug, name, unit, aggregation, billable, declared by, description
    ("workspace_seconds", "Workspace time", "seconds", "sum", True, "platform",
     "Whole seconds of every session, from its start to its end; interim events at least every minute."),
    ("storage_bytes", "Storage", "bytes", "max", True, "platform",
     "Each tenant's storage directory, sampled hourly. Quota: the latest sample. Billed as GB-month: the mean "
     "of the month's daily peaks, in GiB."),
    ("egress_bytes", "Egress", "bytes", "sum", True, "platform",
     "Bytes sent to browsers by the gateway, from its per-session counters."),
    ("seats", "Seats", "members", "max", True, "platform",
     "Members of the tenant, sampled daily; the period's figure is its peak."),
    ("ai_builder_tokens", "AI builder tokens", "tokens", "sum", True, "template",
     "Example custom meter: model tokens counted by the AI builder's gateway, sent to POST /api/v1/usage/events."),
]


def load(apps, schema_editor):
    Meter = apps.get_model("metering", "Meter")
    for slug, name, unit, aggregation, billable, declared_by, description in DEFAULT_METERS:
        Meter.objects.get_or_create(
            slug=slug,
            defaults=dict(name=name, unit=unit, aggregation=aggregation, billable=billable,
                          declared_by=declared_by, description=description),
        )


class Migration(migrations.Migration):
    dependencies = [("metering", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
