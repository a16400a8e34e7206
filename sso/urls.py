"""Single sign-on routes: the routing by email address, and each kind's start and callback."""
from django.urls import path

from sso import oidc, saml, views

app_name = "sso"
urlpatterns = [
    path("login", views.sso_login, name="login"),
    path("oidc/<int:identity_provider_id>/start", oidc.OidcLoginStartView.as_view(), name="oidc-start"),
    path("oidc/callback/", oidc.OidcCallbackView.as_view(), name="oidc-callback"),
    path("saml/<int:identity_provider_id>/login/", saml.SamlLoginView.as_view(), name="saml-login"),
    path("saml/<int:identity_provider_id>/acs/", saml.SamlAcsView.as_view(), name="saml-acs"),
    path("saml/<int:identity_provider_id>/metadata/", saml.SamlMetadataView.as_view(), name="saml-metadata"),
]
