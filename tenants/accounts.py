"""allauth glue: sign-up creates the user's tenant, or joins the inviting one once the address is verified."""
from allauth.account.adapter import DefaultAccountAdapter
from django import forms
from django.contrib import messages
from django.db import transaction
from django.shortcuts import redirect

from tenants import policy, services
from tenants.exceptions import ServiceError
from tenants.models import Plan
from tenants.portal import INVITATION_SESSION_KEY, choose_tenant
from tenants.selectors import invitation_state

# The paid plan chosen at sign-up, bought (Stripe Checkout) right after the first sign-in.
PLAN_SESSION_KEY = "hearth_plan_after_signup"


def pending_invitation(request):
    """The invitation whose link this browser opened while signed out, if it is still pending; else None."""
    token = request.session.get(INVITATION_SESSION_KEY) if hasattr(request, "session") else None
    if not token:
        return None
    try:
        invitation = services.invitation_by_token(token)
    except ServiceError:
        return None
    return invitation if invitation_state(invitation) == "pending" else None


class AccountAdapter(DefaultAccountAdapter):
    def authenticate(self, request, **credentials):
        """A right password is still refused to members of a tenant that enforces single sign-on, with a message
        pointing to it (checked after the password, so the answer says nothing about an address to a guesser)."""
        user = super().authenticate(request, **credentials)
        if user is not None:
            try:
                policy.password_login_check(user)
            except ServiceError as exc:
                raise forms.ValidationError(exc.message, code=exc.code) from None
        return user

    def save_user(self, request, user, form, commit=True):
        """The user and their tenant are created in one transaction: never a user without a tenant.

        Signing up through an invitation for this very address creates no tenant: the user joins the
        inviting one in `post_login`, after the address is verified.
        """
        if not commit:
            return super().save_user(request, user, form, commit=False)
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=True)
            data = getattr(form, "cleaned_data", {})
            if data.get("invitation_token"):
                request.session[INVITATION_SESSION_KEY] = data["invitation_token"]
                return user
            invitation = pending_invitation(request)
            if invitation is not None and invitation.email.lower() == user.email.lower():
                return user
            name = (data.get("organisation") or "").strip() or f"{user.email.split('@')[0]}'s team"
            # A paid plan starts only when it is paid: the tenant starts on Free, and the owner is sent to checkout
            # once signed in (post_login), in the browser that signed up.
            tenant = services.tenant_onboard(name=name, owner=user, plan="free")
            chosen = data.get("plan")
            if chosen is not None and chosen.slug != tenant.plan.slug:
                request.session[PLAN_SESSION_KEY] = chosen.slug
        return user

    def post_login(self, request, user, **kwargs):
        """After sign-in (or the login that follows email confirmation) accept the invitation opened earlier."""
        response = super().post_login(request, user, **kwargs)
        token = request.session.pop(INVITATION_SESSION_KEY, None)
        if not token:
            return self._checkout_chosen_plan(request, user) or response
        try:
            membership = services.invitation_accept(token=token, user=user)
        except ServiceError as exc:
            messages.error(request, exc.message)
            # The invitation page says what went wrong (expired, used, another address) and what to do.
            return redirect("portal:invitation", token=token)
        choose_tenant(request, membership.tenant.slug)
        messages.success(request, f"You joined {membership.tenant.name} as {membership.get_role_display().lower()}.")
        return redirect("portal:dashboard")


    def _checkout_chosen_plan(self, request, user):
        """The paid plan chosen at sign-up: its checkout, now that the owner is signed in; None if there is none."""
        slug = request.session.pop(PLAN_SESSION_KEY, None)
        membership = user.memberships.select_related("tenant").filter(role="owner").order_by("pk").first()
        if not slug or membership is None:
            return None
        try:
            result = services.tenant_request_plan(tenant=membership.tenant, plan=slug, actor=user,
                                                  return_url=request.build_absolute_uri("/billing/"))
        except ServiceError as exc:
            messages.error(request, exc.message)
            return None
        choose_tenant(request, membership.tenant.slug)
        return redirect(result.checkout_url) if result.checkout_url else None


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

    def clean(self):
        """A sign-up that would create a tenant the limits forbid (TENANTS_MAX_*_PER_USER at 0) is a form error,
        before any user is made. A new user owns nothing, so only a zero limit refuses here."""
        data = super().clean()
        if not data.get("invitation_token"):
            try:
                policy.tenants_owned_check(plan=Plan.objects.get(slug="free"), owned_plans=[])
            except ServiceError as exc:
                raise forms.ValidationError(exc.message, code=exc.code) from None
        return data

    def signup(self, request, user):
        """allauth's hook after the user is saved; the tenant is already made in AccountAdapter.save_user."""

