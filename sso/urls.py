"""Single sign-on routes: the routing by email address, and each kind's start and callback."""
from django.urls import path

from sso import oidc, views

app_name = "sso"
urlpatterns = [
    path("login", views.sso_login, name="login"),
    path("oidc/<int:identity_provider_id>/start", oidc.OidcLoginStartView.as_view(), name="oidc-start"),
    path("oidc/callback/", oidc.OidcCallbackView.as_view(), name="oidc-callback"),
]
