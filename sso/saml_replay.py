"""The rule that a SAML assertion signs in once: its id is recorded per identity provider until its NotOnOrAfter
(plus the clock leeway) has passed — until then pysaml2 would accept it, afterwards it refuses it as expired — and
a second use is refused. A unique index decides between two concurrent uses."""
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from sso.models import SamlAssertion
from sso.views import TokenRejected


def saml_assertion_use(*, identity_provider, assertion_id, not_on_or_after):
    """Record the assertion's use; TokenRejected(sso_saml_replayed) if it was used before. `not_on_or_after` is
    the bearer confirmation's NotOnOrAfter (xs:dateTime text)."""
    if not assertion_id or len(assertion_id) > 255 or not not_on_or_after:
        raise TokenRejected("The assertion has no id (or one over 255 characters) or no NotOnOrAfter in its bearer "
                            "confirmation, so its single use cannot be checked.", code="sso_saml_unconfirmed")
    try:
        expires = datetime.fromisoformat(str(not_on_or_after))
    except ValueError:
        raise TokenRejected(f"The assertion's NotOnOrAfter '{not_on_or_after}' is not a date.",
                            code="sso_saml_unconfirmed") from None
    if expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    now = timezone.now()
    SamlAssertion.objects.filter(not_on_or_after__lt=now).delete()
    try:
        with transaction.atomic():
            SamlAssertion.objects.create(identity_provider=identity_provider, assertion_id=assertion_id,
                                         not_on_or_after=expires + timedelta(seconds=settings.SSO_CLOCK_LEEWAY))
    except IntegrityError:
        raise TokenRejected("This SAML assertion was already used to sign in: a response can sign in only once. "
                            "Start again from the sign-in page.", code="sso_saml_replayed") from None
