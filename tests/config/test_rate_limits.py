"""Rate limits (allauth's failed logins, signups, resets) count in Redis: every web process shares one count per
client, and the client is the address a trusted proxy reports. Real Redis, a second real process."""
import os
import subprocess
import sys

from allauth.core import ratelimit
from django.conf import settings
from django.test import RequestFactory


def _request(remote_addr="127.0.0.1", **headers):
    return RequestFactory().post("/accounts/login/", REMOTE_ADDR=remote_addr, **headers)


def test_failed_logins_counted_by_another_process_limit_this_one():
    address = f"203.0.113.{os.getpid() % 250 + 1}"
    code = ("import django; django.setup(); from allauth.core import ratelimit; from django.test import RequestFactory;"
            f"r = RequestFactory().post('/accounts/login/', REMOTE_ADDR='{address}');"
            "print(sum(ratelimit.consume(r, action='login_failed', key=f'u{i}@example.com') for i in range(10)))")
    other = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, capture_output=True, text=True,
                           env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings.test"}, timeout=60)
    assert other.stdout.strip() == "10", other.stderr  # the other process used up the address's 10 a minute
    assert not ratelimit.consume(_request(address), action="login_failed", key="u10@example.com")
    # Another client is not limited.
    assert ratelimit.consume(_request("203.0.113.251"), action="login_failed", key="u11@example.com")


def test_behind_a_trusted_proxy_the_client_is_the_forwarded_address(settings):
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    forwarded = f"198.51.100.{os.getpid() % 250 + 1}"
    for i in range(10):
        assert ratelimit.consume(_request(HTTP_X_FORWARDED_FOR=forwarded), action="login_failed",
                                 key=f"p{i}@example.com")
    assert not ratelimit.consume(_request(HTTP_X_FORWARDED_FOR=forwarded), action="login_failed",
                                 key="p10@example.com")
    # Everyone arrives from the proxy's address: another client behind it is still counted on its own.
    assert ratelimit.consume(_request(HTTP_X_FORWARDED_FOR="198.51.100.252"), action="login_failed",
                             key="p11@example.com")
