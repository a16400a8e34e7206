"""The five default plans. Staff edit them in admin afterwards; this runs once."""
from django.db import migrations

DEFAULT_PLANS = [
    # slug, name, price cents, daily minutes, monthly hours, storage MB, seats, concurrent, idle min, overage c/h
    ("free", "Free", 0, 30, None, 100, 1, 1, 10, None),
    ("starter", "Starter", 500, None, 5, 1024, 1, 1, 15, None),
    ("pro", "Pro", 1000, None, 20, 5 * 1024, 1, 2, 30, 50),
    ("team", "Team", 2500, None, 100, 10 * 1024, 3, 3, 30, 50),
    ("enterprise", "Enterprise", None, None, None, None, None, None, 60, None),
]


def load(apps, schema_editor):
    Plan = apps.get_model("tenants", "Plan")
    for order, (slug, name, price, daily, hours, storage, seats, concurrent, idle, overage) in enumerate(DEFAULT_PLANS):
        Plan.objects.update_or_create(
            slug=slug,
            defaults=dict(
                name=name, monthly_price_cents=price, currency="usd", daily_minutes=daily, monthly_hours=hours,
                storage_mb=storage, seats=seats, max_concurrent_workspaces=concurrent, idle_timeout_minutes=idle,
                overage_price_cents_per_hour=overage, public=slug != "enterprise", sort_order=order,
            ),
        )


class Migration(migrations.Migration):
    dependencies = [("tenants", "0001_initial")]
    operations = [migrations.RunPython(load, migrations.RunPython.noop)]
