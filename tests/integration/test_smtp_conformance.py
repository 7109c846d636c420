"""The SMTP intake as an outside tester with an SMTP client probes it (RFC 5321, 3207, 4954, 2034, 1870, 3461),
through a running hub and a raw socket client over the test PKI: each reply's code and enhanced status code."""

import base64

from tests.integration.conftest import PASSWORD
from tests.support import RawSMTP, wait_for

SENDER = b"dpi@ch-test.example"
HEAD = b"From: <dpi@ch-test.example>\r\nSubject: test\r\nMessage-ID: <%d@test>\r\n\r\nbody\r\n"


async def raw(hub, pki) -> RawSMTP:
    return await RawSMTP.open(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)


async def test_bare_postmaster_is_answered_as_postmaster_at_the_hub_domain(start_hub, peer, pki):
    """RFC 5321 4.5.1: `RCPT TO:<Postmaster>` (no domain) must be supported. It is postmaster@ the first hub domain,
    with that address's answer: here the hub's domain is not a local destination (a route in delivery.transport is
    no permission), so both get the same 550 5.1.1: not the 553 of a malformed address, nor a 250 that delivery
    would bounce."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "hub.example.org": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    for rcpt in (b"<postmaster>", b"<PostMaster>", b"<postmaster@hub.example.org>", b"<Postmaster@HUB.example.org>"):
        code, text = await c.cmd(b"RCPT TO:" + rcpt)
        assert (code, text[4:9]) == (550, "5.1.1") and "postmaster@hub.example.org" in text.lower(), (rcpt, text)
    await c.close()


async def test_bare_postmaster_goes_where_the_hub_domain_goes_and_never_outside(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "hub.example.org": peer.port_},
                          delivery={"local_domains": ["ch-test.example", "hub.example.org"]})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    assert (await c.cmd(b"RCPT TO:<postmaster@relay.example>"))[1].startswith("550 5.7.1 Relay access denied")
    assert (await c.cmd(b"RCPT TO:<@relay.example:Postmaster>"))[1] == "250 2.1.5 Recipient OK"   # route dropped
    assert (await c.cmd(b"DATA"))[0] == 354
    code, text = await c.cmd(HEAD % 1 + b".")
    assert code == 250, text
    await c.close()
    await wait_for(lambda: len(peer.messages) == 1)
    assert peer.messages[0].rcpt_tos == ["postmaster@hub.example.org"]
    assert await conn.fetchval("SELECT address FROM recipient") == "postmaster@hub.example.org"
    anonymous = await RawSMTP.open(hub.smtp_port, pki["ca_file"])       # submission: no account, no transaction
    assert (await anonymous.cmd(b"MAIL FROM:<" + SENDER + b">"))[1].startswith("530 5.7.0")
    assert (await anonymous.cmd(b"RCPT TO:<postmaster>"))[1].startswith("503 5.5.1")
    await anonymous.close()
