"""The owners' portal form of an identity provider. It only turns text into the API's shapes (lists, name → name
maps); every rule (URLs, domains, scopes, roles, required fields) is sso.services', the one validation the API uses
too, whose errors land on the field they name."""
from django import forms
from django.conf import settings
from django.urls import reverse

from sso import services
from sso.models import DEFAULT_OIDC_SCOPES, IdentityProvider

# The fields of each kind, in the order the form shows them (the services' lists say which a kind accepts).
KIND_FIELDS = {IdentityProvider.Kind.OIDC: services.OIDC_FIELDS, IdentityProvider.Kind.SAML: services.SAML_FIELDS}
MAPPINGS = ("claim_mapping", "attribute_mapping", "group_roles")
# Shown without "(optional)" (sso.services._require_complete; SAML needs the metadata URL or XML, so neither alone).
NEEDED = {IdentityProvider.Kind.OIDC: ("issuer", "client_id"), IdentityProvider.Kind.SAML: ()}


def _lines_to_mapping(text):
    """'name = value' per line (':' works too) → {name: value}."""
    mapping = {}
    for number, line in enumerate(str(text or "").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.partition("=") if "=" in line else line.partition(":")
        if not sep or not name.strip() or not value.strip():
            raise forms.ValidationError(f"Line {number} ('{line}'): write each line as name = value.",
                                        code="invalid")
        mapping[name.strip()] = value.strip()
    return mapping


def mapping_to_lines(mapping):
    return "\n".join(f"{name} = {value}" for name, value in (mapping or {}).items())


class IdentityProviderForm(forms.Form):
    # --- OIDC
    issuer = forms.CharField(
        label="Issuer URL", max_length=500, required=False,
        help_text="The IdP's issuer, or its <code>/.well-known/openid-configuration</code> URL.")
    client_id = forms.CharField(label="Client ID", max_length=255, required=False)
    client_secret = forms.CharField(
        label="Client secret", max_length=1000, required=False,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}))
    scopes = forms.CharField(label="Scopes", max_length=300, required=False, initial=DEFAULT_OIDC_SCOPES,
                             help_text="Space-separated; must include <code>openid</code>. Add <code>groups</code> "
                                       "(or your IdP's name for it) to map roles from groups.")
    claim_mapping = forms.CharField(
        label="Claim names", required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="Only if your IdP uses other names: one <code>hearth name = IdP claim</code> per line, e.g. "
                  "<code>groups = roles</code>. Names: email, email_verified, name, given_name, family_name, "
                  "groups.")
    # --- SAML
    metadata_url = forms.CharField(label="IdP metadata URL", max_length=500, required=False)
    metadata_xml = forms.CharField(label="IdP metadata XML", max_length=200_000, required=False,
                                   widget=forms.Textarea(attrs={"rows": 4}),
                                   help_text="Instead of the URL: paste the IdP's metadata document.")
    entity_id = forms.CharField(label="IdP entity ID", max_length=500, required=False)
    attribute_mapping = forms.CharField(
        label="Attribute names", required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One <code>hearth name = SAML attribute</code> per line, e.g. "
                  "<code>email = http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress</code>.")
    # --- both
    domains = forms.CharField(
        label="Email domains", required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One per line (or comma-separated). Each signs in through this IdP once you prove you own it "
                  "with a DNS TXT record.")
    default_role = forms.ChoiceField(label="Role of new members", choices=[(r, r.capitalize()) for r in
                                                                          services.MAPPABLE_ROLES])
    group_roles = forms.CharField(
        label="Group → role", required=False, widget=forms.Textarea(attrs={"rows": 2}),
        help_text="One <code>IdP group = role</code> per line (member or admin), e.g. "
                  "<code>platform-admins = admin</code>. Owners are made in Hearth only.")
    enforce_sso = forms.BooleanField(
        label="Enforce single sign-on: members cannot use a password or GitHub/Google (once a domain is verified)",
        required=False)

    def __init__(self, *args, kind, identity_provider=None, **kwargs):
        self.kind = kind
        self.identity_provider = identity_provider
        if identity_provider is not None and "initial" not in kwargs:
            kwargs["initial"] = self.initial_of(identity_provider)
        super().__init__(*args, **kwargs)
        for name in KIND_FIELDS[IdentityProvider.Kind.SAML if kind == IdentityProvider.Kind.OIDC
                                else IdentityProvider.Kind.OIDC]:
            self.fields.pop(name, None)
        # Needed, though not required by the form: sso.services says what is missing, for the API and this form alike.
        for name in NEEDED[kind] + (("client_secret",) if kind == IdentityProvider.Kind.OIDC and identity_provider
                                    is None else ()):
            self.fields[name].needed = True
        if "client_secret" in self.fields:
            self.fields["client_secret"].help_text = (
                "Stored encrypted and never shown. Leave empty to keep the current one."
                if identity_provider is not None and identity_provider.client_secret_encrypted
                else "Stored encrypted and never shown again.")
        if "issuer" in self.fields:
            self.fields["issuer"].help_text += (f" Register the redirect URI <code>{redirect_uri()}</code> at the "
                                                f"IdP.")

    @staticmethod
    def initial_of(provider):
        initial = {name: getattr(provider, name) for name in ("issuer", "client_id", "scopes", "metadata_url",
                                                              "metadata_xml", "entity_id", "default_role",
                                                              "enforce_sso")}
        initial.update({name: mapping_to_lines(getattr(provider, name)) for name in MAPPINGS})
        initial["domains"] = "\n".join(row.domain for row in provider.domains.all())
        return initial

    def clean_domains(self):
        text = self.cleaned_data.get("domains") or ""
        return [part for part in text.replace(",", " ").split() if part]

    def _clean_mapping(self, name):
        return _lines_to_mapping(self.cleaned_data.get(name))

    def clean_claim_mapping(self):
        return self._clean_mapping("claim_mapping")

    def clean_attribute_mapping(self):
        return self._clean_mapping("attribute_mapping")

    def clean_group_roles(self):
        return self._clean_mapping("group_roles")

    def changes(self):
        """The service's keyword arguments: this kind's fields; an empty client secret keeps the stored one."""
        data = {name: value for name, value in self.cleaned_data.items() if name in self.fields}
        if not data.get("client_secret"):
            data.pop("client_secret", None)
        return data


def redirect_uri():
    """What the owner registers at an OIDC IdP: one callback for every tenant (docs/SSO.md)."""
    return f"{settings.HEARTH_BASE_URL.rstrip('/')}{reverse('sso:oidc-callback')}"
