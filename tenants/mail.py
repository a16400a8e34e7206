"""Mails the tenants app sends itself (allauth sends the account mails)."""
import logging

from django.conf import settings
from django.core.mail import send_mail
from django.template.loader import render_to_string

log = logging.getLogger(__name__)


def invitation_mail_send(*, invitation, accept_url):
    """Mail the invitation link; True if the mail server took it. The invitation exists either way."""
    context = {"invitation": invitation, "tenant": invitation.tenant, "accept_url": accept_url,
               "inviter": invitation.invited_by}
    subject = render_to_string("tenants/email/invitation_subject.txt", context).strip()
    body = render_to_string("tenants/email/invitation_message.txt", context)
    try:
        send_mail(subject, body, settings.DEFAULT_FROM_EMAIL, [invitation.email])
    except Exception:  # SMTP refusals and network errors: the inviter gets the link to pass on instead
        log.exception("could not mail the invitation %s to %s", invitation.pk, invitation.email)
        return False
    return True
