"""Where a recipient domain's mail goes and how securely.

Next hop: the `[delivery.transport]` table (domain -> host:port, like Postfix's transport map), else DNS MX
(dnspython, with a timeout; a DNS failure is temporary, a domain without MX nor address is permanent).
TLS: trust-space domains ALWAYS get verified mutual TLS (TLS 1.2+, the hub's client certificate, the peer's
certificate verified against delivery.ca_file). `[delivery.tls_policy]` may relax this to "encrypt" (TLS without
verification) or "none" only for next hops outside the trust space (a local archive, a print service, a benchmark
sink); a relaxed policy for a trust-space domain is ignored and logged.
Settings read: delivery.transport, delivery.tls_policy, delivery.ca_file, delivery.client_cert/key,
delivery.connect_timeout.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import structlog

from hub.errors import PermanentError, TemporaryError

log = structlog.get_logger("hub.delivery")

# MSSanté Référentiel #2 ECO.1.1.3 suites for TLS 1.2; TLS 1.3 suites are not affected by set_ciphers.
MSS_CIPHERS = ("ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-AES256-SHA384:"
               "ECDHE-RSA-AES128-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256")


@dataclass(frozen=True)
class NextHop:
    host: str
    port: int
    tls: str                 # verify | encrypt | none

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"


def client_tls_context(settings, verify: bool) -> ssl.SSLContext:
    d = settings.delivery
    if verify:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=d.ca_file or None)
    else:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(MSS_CIPHERS)
    if d.client_cert:
        ctx.load_cert_chain(d.client_cert, d.client_key)
    return ctx


class NextHops:
    def __init__(self, settings, trust, resolver=None):
        self.settings = settings
        self.trust = trust
        self.transport = {k.lower(): v for k, v in settings.delivery.transport.items()}
        self.policy = {k.lower(): v for k, v in settings.delivery.tls_policy.items()}
        self._resolver = resolver

    def tls_for(self, domain: str, host: str, port: int) -> str:
        wanted = self.policy.get(domain) or self.policy.get(f"{host}:{port}".lower()) or \
            self.policy.get(host.lower()) or "verify"
        if wanted != "verify" and self.trust.is_trusted(domain):
            log.warning("tls_policy_ignored", domain=domain, policy=wanted,
                        reason="trust-space domains always get verified mutual TLS")
            return "verify"
        return wanted

    async def lookup(self, domain: str) -> list[NextHop]:
        domain = domain.lower()
        if domain in self.transport:
            host, _, port = self.transport[domain].rpartition(":")
            host = host.strip("[]")
            return [NextHop(host, int(port), self.tls_for(domain, host, int(port)))]
        hosts = await self._mx(domain)
        return [NextHop(h, 25, self.tls_for(domain, h, 25)) for h in hosts]

    async def _mx(self, domain: str) -> list[str]:
        import dns.asyncresolver
        import dns.exception
        import dns.resolver

        resolver = self._resolver or dns.asyncresolver.Resolver()
        resolver.lifetime = self.settings.delivery.connect_timeout
        try:
            answer = await resolver.resolve(domain, "MX")
            records = sorted(answer, key=lambda r: r.preference)
            hosts = [str(r.exchange).rstrip(".") for r in records if str(r.exchange) not in (".", "")]
            if not hosts:
                raise PermanentError(f"5.1.2 domain {domain} does not accept mail (null MX)")
            return hosts
        except dns.resolver.NXDOMAIN:
            raise PermanentError(f"5.1.2 domain {domain} does not exist") from None
        except dns.resolver.NoAnswer:
            return [domain]          # implicit MX (RFC 5321 5.1)
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            raise TemporaryError(f"4.4.3 DNS lookup of {domain} failed: {exc}") from None
