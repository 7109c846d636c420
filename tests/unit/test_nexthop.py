"""Next-hop choice and TLS policy: the real code path with a stand-in for the internet's DNS."""

import dns.name
import dns.resolver
import pytest

from hub.delivery.nexthop import NextHops
from hub.directory.trust import TrustSpace
from hub.errors import PermanentError, TemporaryError
from hub.settings import DeliverySection, Settings


class FakeMX:
    def __init__(self, preference, exchange):
        self.preference, self.exchange = preference, dns.name.from_text(exchange)


class FakeResolver:
    """Answers like dnspython's async resolver for a few names (the internet's DNS cannot be reached here)."""
    lifetime = 0

    def __init__(self, answers):
        self.answers = answers

    async def resolve(self, name, rdtype):
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            raise answer
        return answer


def hops(transport=None, policy=None, answers=None):
    trust = TrustSpace(["hub.example.org"], ["archive.local"])
    trust.load_rows(1, [{"domain": "ch-a.mssante.fr", "operator_dn": "CN=x"}])
    s = Settings(delivery=DeliverySection(transport=transport or {}, tls_policy=policy or {}))
    return NextHops(s, trust, resolver=FakeResolver(answers or {}))


async def test_mx_records_in_preference_order():
    h = hops(answers={"ch-a.mssante.fr": [FakeMX(20, "mx2.op.fr."), FakeMX(10, "mx1.op.fr.")]})
    assert [(x.host, x.port, x.tls) for x in await h.lookup("ch-a.mssante.fr")] == \
        [("mx1.op.fr", 25, "verify"), ("mx2.op.fr", 25, "verify")]


async def test_dns_failures_are_classified():
    h = hops(answers={"gone.mssante.fr": dns.resolver.NXDOMAIN(), "slow.mssante.fr": dns.resolver.LifetimeTimeout(),
                      "nomx.mssante.fr": dns.resolver.NoAnswer(), "null.mssante.fr": [FakeMX(0, ".")]})
    with pytest.raises(PermanentError):
        await h.lookup("gone.mssante.fr")
    with pytest.raises(PermanentError):
        await h.lookup("null.mssante.fr")
    with pytest.raises(TemporaryError):
        await h.lookup("slow.mssante.fr")
    assert [x.host for x in await h.lookup("nomx.mssante.fr")] == ["nomx.mssante.fr"]   # implicit MX


async def test_transport_map_and_tls_policy_never_relaxed_for_the_trust_space():
    h = hops(transport={"ch-a.mssante.fr": "10.0.0.5:2525", "archive.local": "[10.0.0.9]:25"},
             policy={"ch-a.mssante.fr": "none", "archive.local": "none"})
    assert [(x.host, x.port, x.tls) for x in await h.lookup("ch-a.mssante.fr")] == [("10.0.0.5", 2525, "verify")]
    assert [(x.host, x.port, x.tls) for x in await h.lookup("archive.local")] == [("10.0.0.9", 25, "none")]
