"""BillingEvent.cumulative (filled from the usage identifiers' last part), and a BillingAccount for every tenant that
already has a Stripe customer."""
from django.conf import settings
from django.db import migrations, models


def cumulative_fill(apps, schema_editor):
    BillingEvent = apps.get_model("billing", "BillingEvent")
    for event in BillingEvent.objects.filter(kind="usage", cumulative__isnull=True).only("pk", "identifier"):
        # usage:t<tenant>:<meter>:<YYYY-MM>:<cumulative>
        event.cumulative = int(event.identifier.rsplit(":", 1)[1])
        event.save(update_fields=["cumulative"])


def stripe_accounts_fill(apps, schema_editor):
    Customer = apps.get_model("djstripe", "Customer")
    BillingAccount = apps.get_model("billing", "BillingAccount")
    customers = Customer.objects.filter(subscriber__isnull=False, livemode=settings.STRIPE_LIVE_MODE)
    for customer_id, tenant_id in customers.values_list("id", "subscriber_id"):
        account, created = BillingAccount.objects.get_or_create(
            tenant_id=tenant_id, defaults={"providers": ["stripe"], "stripe_customer_id": customer_id})
        if not created and not account.stripe_customer_id:
            account.stripe_customer_id = customer_id
            account.providers = account.providers or ["stripe"]
            account.save(update_fields=["stripe_customer_id", "providers"])


class Migration(migrations.Migration):

    dependencies = [
        ("billing", "0001_initial"),
        ("djstripe", "0003_2_11"),
        ("tenants", "0003_billing_state"),
    ]

    operations = [
        migrations.AddField(
            model_name="billingevent",
            name="cumulative",
            field=models.BigIntegerField(blank=True, help_text="Usage: the month's billable quantity after this event.",
                                         null=True),
        ),
        migrations.RunPython(cumulative_fill, migrations.RunPython.noop),
        migrations.RunPython(stripe_accounts_fill, migrations.RunPython.noop),
    ]
