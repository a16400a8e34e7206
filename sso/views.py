"""The sign-in's routing by email address (GET /sso/login?email=…) and the page every refused SSO sign-in ends on.
Each kind of identity provider adds its start view in LOGIN_STARTS (sso.oidc, sso.saml)."""
from urllib.parse import urlencode

from django.contrib import messages
from django.http import HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET

from sso.models import IdentityProvider
from sso.selectors import email_domain, identity_provider_for_email
from tenants import policy
from tenants.exceptions import NotFound, ServiceError

# Kind → the URL name of the view that starts a sign-in with that kind of provider (it takes the provider's id).
LOGIN_STARTS = {IdentityProvider.Kind.OIDC: "sso:oidc-start", IdentityProvider.Kind.SAML: "sso:saml-login"}


class TokenRejected(ServiceError):
    """The identity provider's answer (an ID token, a SAML response) did not pass a check; nobody is signed in."""

    status_code = 400
    code = "sso_token_rejected"


def login_failed(request, exc: ServiceError):
    """The page of a refused SSO sign-in: what happened, and the way back to the sign-in page."""
    return render(request, "sso/login_failed.html", {"error": exc}, status=exc.status_code)


def routable_provider(identity_provider_id, *, kind):
    """The identity provider if sign-ins may go to it now: of that kind, a verified domain, a tenant that is not
    offboarded and a plan with SSO. Else NotFound or Forbidden."""
    provider = (IdentityProvider.objects.select_related("tenant__plan")
                .filter(pk=identity_provider_id, kind=kind, domains__verified_at__isnull=False).first())
    if provider is None:
        raise NotFound("No identity provider signs in here.", code="sso_idp_not_found")
    policy.require_not_offboarded(provider.tenant)
    policy.sso_check(provider.tenant)
    return provider


def _password_form(request, email, next_url):
    query = {"email": email, **({"next": next_url} if next_url else {})}
    return HttpResponseRedirect(f"{reverse('account_login')}?{urlencode(query)}")


@require_GET
def sso_login(request):
    """Step one of the sign-in: an address whose domain a tenant has verified for its identity provider goes to
    that provider; any other address goes on to the password form."""
    email = request.GET.get("email", "").strip()
    next_url = request.GET.get("next", "")
    if next_url and not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()},
                                                        require_https=request.is_secure()):
        next_url = ""
    if not email_domain(email) or len(email) > 254:
        return render(request, "account/login.html", {"email_error": f"'{email}' is not an email address.",
                                                      "email": email}, status=400)
    provider = identity_provider_for_email(email)
    if provider is None:
        return _password_form(request, email, next_url)
    start = LOGIN_STARTS.get(provider.kind)
    try:
        if start is None:
            raise ServiceError(f"Sign-in through {provider.get_kind_display()} is not available yet.",
                               code="sso_kind_unavailable")
        policy.require_not_offboarded(provider.tenant)
        policy.sso_check(provider.tenant)
    except ServiceError as exc:
        messages.warning(request, f"Single sign-on is not available for {email_domain(email)}: {exc.message} "
                                  f"Sign in with your password.")
        return _password_form(request, email, next_url)
    query = {"login_hint": email, **({"next": next_url} if next_url else {})}
    return HttpResponseRedirect(f"{reverse(start, args=[provider.pk])}?{urlencode(query)}")
