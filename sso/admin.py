"""Staff edit identity providers in the control plane; every save goes through sso.services (audit rows, domain
rules, enforcement), and staff can vouch for a domain or check its DNS record, and make, rotate or revoke the SCIM
token (sso.scim). SCIM's users and groups are shown, never edited: the directory owns them."""
from django import forms
from django.contrib import admin, messages
from django.utils.html import format_html_join

from core.admin_actions import run_service
from sso import saml_config, scim, services
from sso.models import IdentityProvider, ScimGroup, ScimToken, ScimUser, SsoDomain, SsoIdentity
from tenants.admin import ReadOnlyAdminMixin
from tenants.exceptions import ServiceError

_FIELDS = ("issuer", "client_id", "scopes", "claim_mapping", "metadata_url", "metadata_xml", "entity_id",
           "attribute_mapping", "default_role", "group_roles", "enforce_sso")


class IdentityProviderForm(forms.ModelForm):
    client_secret = forms.CharField(required=False, widget=forms.PasswordInput(render_value=False),
                                    help_text="Stored encrypted and never shown; leave empty to keep the current one.")
    domains_text = forms.CharField(label="Domains", required=False, widget=forms.Textarea(attrs={"rows": 3}),
                                   help_text="One per line. A new domain routes sign-ins once verified.")

    class Meta:
        model = IdentityProvider
        fields = ["tenant", "kind", *_FIELDS]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.instance.pk:
            self.fields["domains_text"].initial = "\n".join(d.domain for d in self.instance.domains.all())
            self.fields["tenant"].disabled = self.fields["kind"].disabled = True

    def domains(self):
        return [line.strip() for line in self.cleaned_data.get("domains_text", "").replace(",", "\n").splitlines()
                if line.strip()]

    def clean(self):
        """The service saves here, so that its refusals show on the form (admin runs this in its transaction)."""
        cleaned = super().clean()
        if self.errors:
            return cleaned
        change = bool(self.instance.pk)
        kind = self.instance.kind if change else cleaned.get("kind")
        # A new provider is given the fields of its kind only (the form shows both kinds' fields).
        own = services.COMMON_FIELDS + (services.OIDC_FIELDS if kind == IdentityProvider.Kind.OIDC
                                        else services.SAML_FIELDS)
        values = {f: cleaned.get(f) for f in _FIELDS if (f in self.changed_data if change else f in own)}
        values = {k: v for k, v in values.items() if v not in (None, "") or change}
        if cleaned.get("client_secret"):
            values["client_secret"] = cleaned["client_secret"]
        values["domains"] = self.domains()
        try:
            if change:
                self.saved = services.identity_provider_update(
                    identity_provider=IdentityProvider.objects.get(pk=self.instance.pk), actor=self.request.user,
                    **values)
            else:
                self.saved = services.identity_provider_create(tenant=cleaned["tenant"], kind=cleaned["kind"],
                                                               actor=self.request.user, **values)
        except ServiceError as exc:
            field = {"domains": "domains_text"}.get(exc.field, exc.field)
            self.add_error(field if field in self.fields else None, exc.message)
        return cleaned


@admin.register(IdentityProvider)
class IdentityProviderAdmin(admin.ModelAdmin):
    form = IdentityProviderForm
    list_display = ["id", "tenant", "kind", "issuer", "client_id", "enforce_sso", "domain_list"]
    list_filter = ["kind", "enforce_sso"]
    search_fields = ["tenant__slug", "issuer", "client_id", "domains__domain"]
    readonly_fields = ["domain_status", "saml_service_provider"]
    actions = ["verify_domains_by_staff", "verify_domains_by_dns", "scim_token_issue"]

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("tenant").prefetch_related("domains")

    @admin.display(description="domains")
    def domain_list(self, obj):
        return ", ".join(f"{d.domain}{'' if d.verified_at else ' (unverified)'}" for d in obj.domains.all())

    @admin.display(description="verification")
    def domain_status(self, obj):
        rows = [(d.domain, f"verified {d.verified_at:%Y-%m-%d} by {d.verified_by}" if d.verified_at
                 else f"TXT {d.txt_record}") for d in obj.domains.all()]
        return format_html_join("", "<div><strong>{}</strong>: {}</div>", rows) or "—"

    @admin.display(description="Hearth as SAML SP")
    def saml_service_provider(self, obj):
        """What the IdP's administrators enter: Hearth's metadata URL (= its entity id) and ACS URL."""
        if obj is None or obj.pk is None or obj.kind != IdentityProvider.Kind.SAML:
            return "—"
        return format_html_join("", "<div>{}: <code>{}</code></div>", [
            ("Metadata URL and entity id", saml_config.sp_entity_id(obj)), ("ACS URL", saml_config.sp_acs_url(obj))])

    def get_form(self, request, obj=None, **kwargs):
        form = super().get_form(request, obj, **kwargs)
        form.request = request
        return form

    def save_model(self, request, obj, form, change):
        obj.pk = form.saved.pk  # saved by the service in the form's clean()
        obj.refresh_from_db()

    def save_related(self, request, form, formsets, change):
        pass  # the domains were saved by the service

    def delete_model(self, request, obj):
        services.identity_provider_delete(identity_provider=obj, actor=request.user)

    def delete_queryset(self, request, queryset):
        for obj in queryset:
            services.identity_provider_delete(identity_provider=obj, actor=request.user)

    @admin.action(description="Verify their domains (staff vouch for them)", permissions=["change"])
    def verify_domains_by_staff(self, request, queryset):
        def verify(provider):
            for row in provider.domains.filter(verified_at__isnull=True):
                services.domain_verify_by_staff(domain=row.domain, actor=request.user, identity_provider=provider)

        run_service(self, request, queryset, verify, "Identity providers whose domains are verified")

    @admin.action(description="Check their domains' DNS TXT records now", permissions=["change"])
    def verify_domains_by_dns(self, request, queryset):
        run_service(self, request, queryset,
                     lambda provider: services.domains_verify_dns(identity_provider=provider, actor=request.user),
                     "Identity providers checked")

    @admin.action(description="Make or rotate the SCIM token (shown once)", permissions=["change"])
    def scim_token_issue(self, request, queryset):
        def issue(provider):
            token, plaintext, old = scim.scim_token_issue(identity_provider=provider, actor=request.user)
            # The only time the secret is shown: staff hand it to the tenant's IdP administrator.
            self.message_user(request, f"{provider}: SCIM token {plaintext} (copy it now; it is not shown again"
                                       f"{'; the previous one is revoked' if old else ''}).", messages.WARNING)

        run_service(self, request, queryset.select_related("tenant__plan"), issue, "SCIM tokens made")


@admin.register(ScimToken)
class ScimTokenAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["name", "prefix", "identity_provider", "created_at", "last_used_at", "revoked_at"]
    list_filter = [("revoked_at", admin.EmptyFieldListFilter)]
    search_fields = ["prefix", "identity_provider__tenant__slug"]
    list_select_related = ["identity_provider__tenant"]
    actions = ["revoke"]

    def has_revoke_permission(self, request):
        return request.user.has_perm("sso.change_scimtoken")  # the row form stays read-only

    @admin.action(description="Revoke selected tokens", permissions=["revoke"])
    def revoke(self, request, queryset):
        run_service(self, request, queryset.filter(revoked_at__isnull=True).select_related(
            "identity_provider__tenant"),
            lambda token: scim.scim_token_revoke(identity_provider=token.identity_provider, actor=request.user),
            "SCIM tokens revoked")


@admin.register(ScimUser)
class ScimUserAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["user_name", "identity_provider", "active", "external_id", "updated_at"]
    list_filter = ["active"]
    search_fields = ["user_name", "external_id", "identity_provider__tenant__slug"]
    list_select_related = ["identity_provider__tenant"]


@admin.register(ScimGroup)
class ScimGroupAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["display_name", "identity_provider", "external_id", "updated_at"]
    search_fields = ["display_name", "identity_provider__tenant__slug"]
    list_select_related = ["identity_provider__tenant"]


@admin.register(SsoIdentity)
class SsoIdentityAdmin(admin.ModelAdmin):
    list_display = ["subject", "identity_provider", "user", "first_login_at", "last_login_at"]
    search_fields = ["subject", "user__email"]
    readonly_fields = ["identity_provider", "subject", "user", "first_login_at", "last_login_at"]

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


admin.site.register(SsoDomain, list_display=["domain", "identity_provider", "verified_at", "verified_by"],
                    search_fields=["domain"], readonly_fields=["identity_provider", "domain", "verified_at",
                                                               "verified_by"],
                    has_add_permission=lambda self, request, obj=None: False)
