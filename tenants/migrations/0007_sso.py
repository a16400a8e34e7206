"""Single sign-on (the sso app): which plans may use it (Team and Enterprise by default), since when a tenant enforces
it, and whether an API token was created after an SSO sign-in."""
from django.db import migrations, models


def sso_plans(apps, schema_editor):
    apps.get_model("tenants", "Plan").objects.filter(slug__in=["team", "enterprise"]).update(sso_allowed=True)


class Migration(migrations.Migration):
    dependencies = [("tenants", "0006_plan_internet_access_proxy")]

    operations = [
        migrations.AddField(
            model_name="plan",
            name="sso_allowed",
            field=models.BooleanField(
                default=False, help_text="Its tenants may sign in through their own identity provider (sso app)."),
        ),
        migrations.AddField(
            model_name="tenant",
            name="sso_enforced_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.AddField(
            model_name="apitoken",
            name="sso_login_at",
            field=models.DateTimeField(blank=True, editable=False, null=True),
        ),
        migrations.RunPython(sso_plans, migrations.RunPython.noop),
    ]
