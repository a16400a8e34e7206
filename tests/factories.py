"""factory_boy factories, one per model."""
import factory
from django.utils.text import slugify

from tenants.models import Membership, Plan, Tenant, User


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("email",)

    email = factory.Sequence(lambda n: f"user{n}@example.test")
    password = factory.django.Password("correct horse battery")


class TenantFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tenant

    name = factory.Sequence(lambda n: f"Tenant {n}")
    slug = factory.LazyAttribute(lambda o: slugify(o.name))
    plan = factory.LazyFunction(lambda: Plan.objects.get(slug="team"))


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    tenant = factory.SubFactory(TenantFactory)
    user = factory.SubFactory(UserFactory)
    role = "member"


# --- metering ---------------------------------------------------------------------------------------------------
from metering.models import Meter  # noqa: E402


class MeterFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Meter
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"custom_meter_{n}")
    name = factory.LazyAttribute(lambda o: o.slug.replace("_", " "))
    unit = "units"
    aggregation = "sum"
    declared_by = "api"
