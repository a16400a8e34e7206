"""Single sign-on routes: the routing by email address, each kind's start and callback, and the owners' pages."""
from django.urls import path

from sso import oidc, portal, saml, views

app_name = "sso"
urlpatterns = [
    path("login", views.sso_login, name="login"),
    path("oidc/<int:identity_provider_id>/start", oidc.OidcLoginStartView.as_view(), name="oidc-start"),
    path("oidc/callback/", oidc.OidcCallbackView.as_view(), name="oidc-callback"),
    # The owners' portal pages (sso.portal).
    path("settings/", portal.settings_page, name="settings"),
    path("settings/new/<str:kind>/", portal.provider_create, name="settings-create"),
    path("settings/<int:identity_provider_id>/", portal.provider_edit, name="settings-edit"),
    path("settings/<int:identity_provider_id>/delete/", portal.provider_delete, name="settings-delete"),
    path("settings/<int:identity_provider_id>/verify/", portal.domains_verify, name="settings-verify"),
    path("saml/<int:identity_provider_id>/login/", saml.SamlLoginView.as_view(), name="saml-login"),
    path("saml/<int:identity_provider_id>/acs/", saml.SamlAcsView.as_view(), name="saml-acs"),
    path("saml/<int:identity_provider_id>/metadata/", saml.SamlMetadataView.as_view(), name="saml-metadata"),
]
