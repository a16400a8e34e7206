"""Proof that a tenant owns an email domain: the TXT record `hearth-verification=<token>` at the domain, read with
dnspython from the system's resolver or SSO_DNS_NAMESERVERS ("ip" or "ip:port", e.g. the tests' loopback server)."""
import dns.exception
import dns.nameserver
import dns.resolver
from django.conf import settings

from tenants.exceptions import Unavailable


def _resolver():
    servers = settings.SSO_DNS_NAMESERVERS
    resolver = dns.resolver.Resolver(configure=not servers)
    if servers:
        nameservers = []
        for server in servers:
            host, _, port = server.rpartition(":") if server.count(":") == 1 else (server, "", "53")
            nameservers.append(dns.nameserver.Do53Nameserver(host, int(port or 53)))
        resolver.nameservers = nameservers
    resolver.lifetime = settings.SSO_DNS_TIMEOUT
    return resolver


def txt_records(domain):
    """The TXT strings published at `domain` ([] when there are none); Unavailable when DNS does not answer."""
    try:
        answer = _resolver().resolve(domain, "TXT", search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise Unavailable(f"The DNS lookup of {domain} failed ({type(exc).__name__}); try again later.",
                          code="dns_unavailable") from None
    return [b"".join(record.strings).decode(errors="replace") for record in answer]


def domain_proves_ownership(domain, *, txt_record):
    return txt_record in txt_records(domain)
