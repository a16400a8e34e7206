"""Portal forms: they validate shape only; the rules (roles, seats, plans) live in tenants.services."""
from django import forms

from tenants.models import Plan, Role, Tenant


class InviteForm(forms.Form):
    email = forms.EmailField(label="Email address", max_length=254,
                             widget=forms.EmailInput(attrs={"autocomplete": "off"}))
    role = forms.ChoiceField(label="Role", choices=Role.choices, initial=Role.MEMBER)


class RoleForm(forms.Form):
    role = forms.ChoiceField(label="Role", choices=Role.choices)


class PlanChangeForm(forms.Form):
    # Any slug: an unknown one is the service's clear "Unknown plan" error.
    plan = forms.SlugField(max_length=40)


class TenantSettingsForm(forms.Form):
    name = forms.CharField(label="Name", max_length=Tenant._meta.get_field("name").max_length,
                           help_text="Shown in the portal and in invitations. The address (slug) stays the same.")


class TenantCreateForm(forms.Form):
    name = forms.CharField(label="Organisation name", max_length=Tenant._meta.get_field("name").max_length)
    plan = forms.ModelChoiceField(queryset=Plan.objects.filter(public=True), to_field_name="slug",
                                  empty_label=None, label="Plan", initial="free")


class ApiTokenForm(forms.Form):
    name = forms.CharField(label="Token name", max_length=80,
                           help_text="What uses it, e.g. “CI pipeline”. Tokens act for you in this organisation.")


class TenantSwitchForm(forms.Form):
    tenant = forms.SlugField(max_length=50)


def add_service_error(form, exc):
    """Put a ServiceError on the form field it concerns, or on the form as a whole."""
    field = exc.field if exc.field in form.fields else None
    form.add_error(field, exc.message)


class ActivityForm(forms.Form):
    """The query of the portal's activity pages (sessions, audit trail): a page, and an action to filter by."""

    page = forms.IntegerField(required=False, min_value=1,
                              error_messages={"invalid": "The page is a whole number, 1 or more.",
                                              "min_value": "The page is a whole number, 1 or more."})
    action = forms.ChoiceField(required=False, error_messages={
        "invalid_choice": "%(value)s is not an action of this audit trail."})

    def __init__(self, data, *, actions=()):
        super().__init__(data)
        self.fields["action"].choices = [("", "All actions"), *((action, action) for action in actions)]
