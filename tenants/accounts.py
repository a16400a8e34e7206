"""allauth glue: sign-up (with a password, or GitHub or Google) creates the user's tenant, or joins the inviting one
once the address is verified."""
from allauth.account.adapter import DefaultAccountAdapter
from allauth.core.exceptions import ImmediateHttpResponse
from allauth.socialaccount.adapter import DefaultSocialAccountAdapter
from allauth.socialaccount.models import SocialApp
from django import forms
from django.contrib import messages
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render

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


def signup_tenant_create(request, user, *, data):
    """The new user's own tenant, in the caller's transaction: never a user without a tenant. `data` is the sign-up
    form's (organisation, plan, invitation_token; empty for a social sign-up without a form).

    Signing up through an invitation for this very address creates no tenant: the user joins the inviting one in
    `post_login`, after the address is verified."""
    if data.get("invitation_token"):
        request.session[INVITATION_SESSION_KEY] = data["invitation_token"]
        return None
    invitation = pending_invitation(request)
    if invitation is not None and invitation.email.lower() == user.email.lower():
        return None
    name = (data.get("organisation") or "").strip() or f"{user.email.split('@')[0]}'s team"
    # A paid plan starts only when it is paid: the tenant starts on Free, and the owner is sent to checkout once
    # signed in (post_login), in the browser that signed up.
    tenant = services.tenant_onboard(name=name, owner=user, plan="free")
    chosen = data.get("plan")
    if chosen is not None and chosen.slug != tenant.plan.slug:
        request.session[PLAN_SESSION_KEY] = chosen.slug
    return tenant


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
        """The user and their tenant are created in one transaction (signup_tenant_create)."""
        if not commit:
            return super().save_user(request, user, form, commit=False)
        with transaction.atomic():
            user = super().save_user(request, user, form, commit=True)
            signup_tenant_create(request, user, data=getattr(form, "cleaned_data", {}))
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


class _NoSocialApp(SocialApp.DoesNotExist, Http404):
    """A provider that is not configured: its URLs answer 404 (allauth's own callers still see DoesNotExist)."""


def _refused(request, exc):
    return render(request, "sso/login_failed.html", {"error": exc, "title": "Sign-in refused"}, status=exc.status_code)


class SocialAccountAdapter(DefaultSocialAccountAdapter):
    """GitHub and Google sign-in: on only when configured (settings.SOCIAL_*), a new user gets a tenant as a
    password sign-up does, and members of a tenant enforcing single sign-on are sent to their identity provider.
    Linking to an existing account by address is allauth's email authentication, which only ever uses the
    addresses the provider marks verified."""

    def get_app(self, request, provider, client_id=None):
        try:
            return super().get_app(request, provider, client_id=client_id)
        except SocialApp.DoesNotExist:
            raise _NoSocialApp(f"Sign-in with {provider} is not configured.") from None

    def pre_social_login(self, request, sociallogin):
        """Refused before anything is linked: the account found (by its link or its verified address) belongs to a
        tenant that enforces single sign-on."""
        user = sociallogin.user
        if user is not None and user.pk:
            try:
                policy.password_login_check(user, method=sociallogin.provider.name)
            except ServiceError as exc:
                raise ImmediateHttpResponse(_refused(request, exc)) from None

    def save_user(self, request, sociallogin, form=None):
        """The user, their social account and their tenant in one transaction. With a form (the address was
        missing or taken), allauth hands it to AccountAdapter.save_user, which makes the tenant."""
        try:
            with transaction.atomic():
                user = super().save_user(request, sociallogin, form=form)
                if form is None:
                    signup_tenant_create(request, user, data={})
        except ServiceError as exc:  # e.g. the tenant limits (TENANTS_MAX_*_PER_USER): no user is left behind
            raise ImmediateHttpResponse(_refused(request, exc)) from None
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

