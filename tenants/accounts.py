"""allauth glue: sign-up asks for the organisation and plan and creates the user's tenant with the user."""
from allauth.account.adapter import DefaultAccountAdapter
from django import forms
from django.db import transaction

from tenants import services
from tenants.models import Plan


class AccountAdapter(DefaultAccountAdapter):
    def save_user(self, request, user, form, commit=True):
        """The user and their tenant are created in one transaction: never a user without a tenant."""
        if not commit:
            return super().save_user(request, user, form, commit=False)
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=True)
            data = getattr(form, "cleaned_data", {})
            if data.get("invitation_token"):
                return user  # joins the inviting tenant once the email is verified
            name = (data.get("organisation") or "").strip() or f"{user.email.split('@')[0]}'s team"
            plan = data.get("plan") or Plan.objects.get(slug="free")
            services.tenant_onboard(name=name, owner=user, plan=plan)
        return user


class SignupForm(forms.Form):
    organisation = forms.CharField(
        max_length=120, required=False, label="Organisation",
        help_text="Your team or company. Leave empty to use your email name.",
    )
    plan = forms.ModelChoiceField(
        queryset=Plan.objects.filter(public=True), to_field_name="slug", required=False, empty_label=None,
        label="Plan",
    )
    invitation_token = forms.CharField(required=False, widget=forms.HiddenInput)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["plan"].initial = "free"

    def signup(self, request, user):
        """allauth's hook after the user is saved; the tenant is already made in AccountAdapter.save_user."""
