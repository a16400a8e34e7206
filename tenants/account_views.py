"""allauth's sign-in, sign-up and password reset views, answering an invalid form with 400 (Hearth's rule).

Kept apart from tenants.accounts: allauth imports that module while building its forms.
"""
from allauth.account import views as allauth_views
from django.urls import path, re_path


# allauth answers an invalid form with 200; Hearth's rule is a 4xx for every form error (the page is the same).
class _InvalidFormIs400:
    def form_invalid(self, form):
        response = super().form_invalid(form)
        response.status_code = 400
        return response


class LoginView(_InvalidFormIs400, allauth_views.LoginView):
    """Two steps: the address first (GET /sso/login routes it to a single sign-on provider or back here with
    ?email=), then the password."""

    def get_initial(self):
        initial = super().get_initial()
        if self.request.GET.get("email"):
            initial["login"] = self.request.GET["email"][:254]
        return initial

    def get_context_data(self, **kwargs):
        context = super().get_context_data(**kwargs)
        context["password_step"] = self.request.method == "POST" or bool(self.request.GET.get("email"))
        return context


class SignupView(_InvalidFormIs400, allauth_views.SignupView):
    pass


class PasswordResetView(_InvalidFormIs400, allauth_views.PasswordResetView):
    pass


class PasswordResetFromKeyView(_InvalidFormIs400, allauth_views.PasswordResetFromKeyView):
    pass


# Mounted under accounts/ before allauth's own URLs, with the same names.
account_urls = [
    path("login/", LoginView.as_view(), name="account_login"),
    path("signup/", SignupView.as_view(), name="account_signup"),
    path("password/reset/", PasswordResetView.as_view(), name="account_reset_password"),
    re_path(r"^password/reset/key/(?P<uidb36>[0-9A-Za-z]+)-(?P<key>.+)/$", PasswordResetFromKeyView.as_view(),
            name="account_reset_password_from_key"),
]
