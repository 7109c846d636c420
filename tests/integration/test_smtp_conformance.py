"""The SMTP intake as an outside tester with an SMTP client probes it (RFC 5321, 3207, 4954, 2034, 1870, 3461),
through a running hub and a raw socket client over the test PKI: each reply's code and enhanced status code."""

import asyncio
import base64
import json
import urllib.request

from tests.integration.conftest import PASSWORD
from tests.support import RawSMTP, wait_for

SENDER = b"dpi@ch-test.example"
HEAD = b"From: <dpi@ch-test.example>\r\nSubject: test\r\nMessage-ID: <%d@test>\r\n\r\nbody\r\n"


async def raw(hub, pki) -> RawSMTP:
    return await RawSMTP.open(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)


async def health_warnings(hub) -> list[str]:
    def get():
        with urllib.request.urlopen(f"http://127.0.0.1:{hub.http_port}/healthz", timeout=10) as r:
            return json.loads(r.read())
    return (await asyncio.to_thread(get)).get("warnings", [])


async def test_bare_postmaster_is_answered_as_postmaster_at_the_hub_domain(start_hub, peer, pki):
    """RFC 5321 4.5.1: `RCPT TO:<Postmaster>` (no domain) must be supported. It is postmaster@ the first hub domain,
    with that address's answer: here the hub's domain is not a local destination (a route in delivery.transport is
    no permission), so both get the same 550 5.1.1: not the 553 of a malformed address, nor a 250 that delivery
    would bounce; /healthz says postmaster mail has no destination."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "hub.example.org": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    for rcpt in (b"<postmaster>", b"<PostMaster>", b"<postmaster@hub.example.org>", b"<Postmaster@HUB.example.org>",
                 b"<postmaster@rpps.hub.example.org>"):                  # the resolution domain's: not a national id
        code, text = await c.cmd(b"RCPT TO:" + rcpt)
        assert (code, text[4:9]) == (550, "5.1.1") and "postmaster@hub.example.org" in text.lower(), (rcpt, text)
    await c.close()
    assert any(w.startswith("postmaster@hub.example.org has no destination") for w in await health_warnings(hub))


async def test_bare_postmaster_goes_where_the_hub_domain_goes_and_never_outside(start_hub, peer, conn, pki):
    """With the hub's domain a local destination, `<Postmaster>` (here behind a source route, which is dropped) is
    accepted, stored and delivered as postmaster@hub.example.org; another domain's postmaster is still relay
    denied, and a client without an account gets no transaction at all (a submission service, RFC 6409 4.3)."""
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
    assert not any(w.startswith("postmaster@") for w in await health_warnings(hub))


async def test_command_lines_are_as_long_as_the_offered_extensions_make_them(start_hub, pki):
    """512 octets (RFC 5321 4.5.3.1.4), and more for MAIL and RCPT by the parameters offered: DSN (RFC 3461: ORCPT
    and ENVID), SIZE (RFC 1870), AUTH= (RFC 4954). The same in every session, whatever the others do (aiosmtpd's
    limits were one dict for every connection, emptied by each new one)."""
    hub = await start_hub({})
    c = await raw(hub, pki)
    other = await raw(hub, pki)                          # a session opened after this one's EHLO
    mail = (b"MAIL FROM:<" + SENDER + b"> SIZE=1000 BODY=8BITMIME RET=HDRS ENVID=" + b"e" * 100 + b" AUTH=" +
            b"a" * 480 + b"@ch-test.example")
    rcpt = b"RCPT TO:<dr.martin@medecin.mssante.fr> NOTIFY=SUCCESS,FAILURE,DELAY ORCPT=rfc822;" + b"o" * 470 + b"@x.fr"
    assert len(mail) > 600 and len(rcpt) > 550
    assert (await c.cmd(mail))[1] == "250 2.1.0 Sender OK"
    assert (await c.cmd(rcpt))[1] == "250 2.1.5 Recipient OK"
    for line in (b"NOOP " + b"n" * 600, b"RCPT TO:<dr.martin@medecin.mssante.fr> NOTIFY=NEVER X=" + b"x" * 1100,
                 b"NOOP " + b"m" * 5000):
        assert (await c.cmd(line))[1] == "500 5.5.2 Command line too long", line[:30]
    assert (await c.cmd(b"NOOP"))[1] == "250 2.0.0 OK"                # still in step
    await other.close()
    await c.close()


async def test_the_auth_parameter_of_mail_is_taken_and_checked(start_hub, peer, pki):
    """RFC 4954 5: a server offering AUTH takes `MAIL FROM:<...> AUTH=<>` (sendmail sends it), trusts it for
    nothing and relays none; a malformed value is a 501 5.5.4 like that of any parameter."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b"> AUTH=someone+40elsewhere.example"))[0] == 250
    assert (await c.cmd(b"RCPT TO:<dr.martin@medecin.mssante.fr>"))[0] == 250
    assert (await c.cmd(b"DATA"))[0] == 354
    code, text = await c.cmd(HEAD % 1 + b".")
    assert code == 250, text
    await wait_for(lambda: len(peer.messages) == 1)
    assert not any(o.upper().startswith("AUTH") for o in peer.messages[0].mail_options)
    for value, want in ((b"<>", "250 2.1.0"), (b"dpi@ch-test.example", "250 2.1.0"), (b"dpi+2Bx@ch-test.example",
                        "250 2.1.0"), (b"a+zz", "501 5.5.4"), (b"a=b", "501 5.5.4"), (b"", "501 5.5.4"),
                        (b"a+00", "501 5.5.4")):
        code, text = await c.cmd(b"MAIL FROM:<" + SENDER + b"> AUTH=" + value if value else
                                 b"MAIL FROM:<" + SENDER + b"> AUTH")
        assert text.startswith(want), (value, text)
        await c.cmd(b"RSET")
    await c.close()


async def test_auth_is_refused_during_a_transaction_and_takes_an_empty_initial_response(start_hub, conn, pki):
    """RFC 4954 4: AUTH during a mail transaction gets 503 5.5.1 (here after a MAIL allowed by the client network);
    `=` is an empty initial response, not a base64 error; the mechanism name is case-insensitive (RFC 4954 7)."""
    from hub.intake import store

    hub = await start_hub({})
    await store.add_account(conn, "net", password_hash=None, cert_subject=None, networks=["127.0.0.0/8"],
                            allow_from=["ch-test.example"], fallback_mailbox=None)
    await hub.accounts.load(conn)
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"])
    plain = b"AUTH PLAIN " + base64.b64encode(f"\0ch-test\0{PASSWORD}".encode())
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    assert (await c.cmd(plain))[1].startswith("503 5.5.1")
    assert (await c.cmd(b"RSET"))[0] == 250
    assert (await c.cmd(b"AUTH PLAIN ="))[1] == "501 5.5.2 Can't split auth value"
    assert (await c.cmd(b"AUTH LOGIN ="))[0] == 334                   # the password challenge comes next
    assert (await c.cmd(b"*"))[1] == "501 5.7.0 Auth aborted"
    assert (await c.cmd(b"AUTH plain " + plain[11:]))[1] == "235 2.7.0 Authentication successful"   # any case
    await c.close()


async def test_auth_login_challenges_are_the_usual_ones(start_hub, pki):
    """`Username:` and `Password:` (what Postfix, Exchange and [MS-XLOGIN] send; clients may check them), not
    aiosmtpd's `User Name\\0` and `Password\\0`."""
    hub = await start_hub({})
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"])
    assert (await c.cmd(b"AUTH LOGIN"))[1] == "334 " + base64.b64encode(b"Username:").decode()
    assert (await c.cmd(base64.b64encode(b"ch-test")))[1] == "334 " + base64.b64encode(b"Password:").decode()
    assert (await c.cmd(base64.b64encode(PASSWORD.encode())))[1] == "235 2.7.0 Authentication successful"
    await c.close()


async def test_help_vrfy_and_unknown_commands(start_hub, pki):
    """HELP is 214 (RFC 5321 4.1.1.8), 504 for a topic without help; VRFY is 252 for anything (nothing is verified)
    and 501 without argument; no reply quotes a control character back; too many unknown commands end the session
    with 421 4.7.0, the reply of a server that closes (RFC 5321 3.8)."""
    hub = await start_hub({})
    c = await raw(hub, pki)
    code, text = await c.cmd(b"HELP")
    assert code == 214 and text.startswith("214 2.0.0") and "MAIL" in text
    assert (await c.cmd(b"HELP mail"))[1].startswith("214 2.0.0 Syntax: MAIL FROM:")
    assert (await c.cmd(b"HELP FOO"))[1].startswith("504 5.5.4")
    for arg in (b"postmaster", b"<\x00@x>", b"a\rb", b"\"unparsable"):
        assert (await c.cmd(b"VRFY " + arg))[1].startswith("252 2.0.0 Cannot VRFY user"), arg
    assert (await c.cmd(b"VRFY"))[1].startswith("501 5.5.4")
    for n in range(4):
        code, text = await c.cmd(b"X\rY\x1b%d" % n)
        assert code == 500 and text.startswith("500 5.5.2") and "\r" not in text and "\x1b" not in text, text
    assert (await c.cmd(b"XYZZY"))[1] == "421 4.7.0 Too many unrecognized commands, closing connection"
    assert await c.reader.read() == b""                                   # and the connection is closed
    await c.close()


async def test_quoted_local_parts(start_hub, peer, conn, pki):
    """`"dr.martin"@...` is dr.martin@... (RFC 5321 4.1.2: the quotes hide a dot-atom): resolved, stored and
    relayed unquoted. A local part that needs its quotes (a space, an `@`) is no MSSanté address: 553 saying so."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b'MAIL FROM:<"d p"@ch-test.example>'))[1].startswith("553 5.1.7 Quoted local part")
    assert (await c.cmd(b'MAIL FROM:<"dpi"@ch-test.example>'))[0] == 250
    for rcpt in (b'"dr martin"@medecin.mssante.fr', b'"a@b"@medecin.mssante.fr', b'dr."x"@medecin.mssante.fr'):
        code, text = await c.cmd(b"RCPT TO:<" + rcpt + b">")
        assert (code, text[4:9]) == (553, "5.1.3"), (rcpt, text)
    assert (await c.cmd(b'RCPT TO:<"dr\\.martin"@medecin.mssante.fr>'))[0] == 250
    assert (await c.cmd(b"DATA"))[0] == 354
    code, text = await c.cmd(HEAD % 1 + b".")
    assert code == 250, text
    await c.close()
    await wait_for(lambda: len(peer.messages) == 1)
    assert (peer.messages[0].mail_from, peer.messages[0].rcpt_tos) == ("dpi@ch-test.example",
                                                                       ["dr.martin@medecin.mssante.fr"])
    assert await conn.fetchval("SELECT mail_from FROM message") == "dpi@ch-test.example"


async def test_parameters_after_helo_are_not_offered(start_hub, pki):
    """After HELO (not EHLO) no extension is offered: a MAIL or RCPT parameter gets 555 5.5.4 (RFC 5321 4.1.1.11),
    not the 501 of a syntax error; without parameters the transaction goes on."""
    hub = await start_hub({})
    c = await raw(hub, pki)
    assert (await c.cmd(b"HELO dpi.ch-test.example"))[0] == 250
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b"> SIZE=10"))[1].startswith("555 5.5.4 Unsupported "
                                                                                "parameter SIZE")
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    assert (await c.cmd(b"RCPT TO:<dr.martin@medecin.mssante.fr> NOTIFY=NEVER"))[1].startswith("555 5.5.4")
    assert (await c.cmd(b"RCPT TO:<dr.martin@medecin.mssante.fr>"))[0] == 250
    await c.close()


async def test_a_mailbox_named_twice_in_a_transaction_is_delivered_once(start_hub, peer, conn, pki):
    """As Postfix does: every RCPT naming the same mailbox (again, in another case, or as the bare postmaster and
    postmaster@ the hub domain) is answered 250, and the message goes to it once."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    for rcpt in (b"dr.martin@medecin.mssante.fr", b"dr.martin@medecin.mssante.fr", b"Dr.Martin@Medecin.mssante.fr",
                 b"dr.durand@medecin.mssante.fr"):
        assert (await c.cmd(b"RCPT TO:<" + rcpt + b">"))[1] == "250 2.1.5 Recipient OK"
    assert (await c.cmd(b"DATA"))[0] == 354
    code, text = await c.cmd(HEAD % 1 + b".")
    assert code == 250, text
    await c.close()
    rows = await conn.fetch("SELECT address FROM recipient ORDER BY address")
    assert [r["address"] for r in rows] == ["dr.durand@medecin.mssante.fr", "dr.martin@medecin.mssante.fr"]
    await wait_for(lambda: sum(len(m.rcpt_tos) for m in peer.messages) == 2)
    assert sorted(r for m in peer.messages for r in m.rcpt_tos) == ["dr.durand@medecin.mssante.fr",
                                                                     "dr.martin@medecin.mssante.fr"]


async def test_noop_is_limited_between_messages_not_per_session(start_hub, peer, pki):
    """A client keeping its session alive with NOOP between messages is never cut; 100 NOOP (or VRFY, HELP) in a
    row without mail end it with 421 4.7.0 (as Postfix's smtpd_junk_command_limit)."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    for n in range(3):
        for _ in range(90):
            assert (await c.cmd(b"NOOP"))[1] == "250 2.0.0 OK"
        code, text = await c.send(SENDER, [b"dr.martin@medecin.mssante.fr"], HEAD % n)
        assert code == 250, text
    for _ in range(100):
        assert (await c.cmd(b"NOOP"))[0] == 250
    assert (await c.cmd(b"VRFY x"))[1] == "421 4.7.0 Too many commands without mail, closing connection"
    assert await c.reader.read() == b""
    await c.close()
    await wait_for(lambda: len(peer.messages) == 3)


async def test_mail_parameter_values_in_any_case(start_hub, pki):
    """Keywords and their values are case-insensitive (RFC 5321 4.1.2, RFC 6152 and 3461 ABNF): `BODY=8bitmime`
    was a 555."""
    hub = await start_hub({})
    c = await raw(hub, pki)
    for params in (b"body=8bitmime", b"BODY=7bit", b"Body=8BitMime ret=hdrs size=10", b"BODY=8BITMIME"):
        assert (await c.cmd(b"MAIL FROM:<" + SENDER + b"> " + params))[1] == "250 2.1.0 Sender OK", params
        assert (await c.cmd(b"RCPT TO:<dr.martin@medecin.mssante.fr> notify=success,Failure"))[0] == 250
        assert (await c.cmd(b"RSET"))[0] == 250
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b"> BODY=BINARYMIME"))[1].startswith("555 5.5.4")
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b"> BODY"))[1].startswith("555 5.5.4")
    await c.close()


async def test_a_silent_client_gets_a_421_before_the_close(start_hub, pki):
    """After smtp.session_timeout of silence the session ends with 421 4.4.2 (RFC 5321 3.8), not with a close
    without a word."""
    hub = await start_hub({}, smtp={"session_timeout": 1.0})
    c = await RawSMTP.open(hub.smtp_port)                 # EHLO, then nothing
    assert await c.reply() == (421, "421 4.4.2 Timeout exceeded, closing connection")
    assert await c.reader.read() == b""
    await c.close()


async def test_no_reply_line_is_longer_than_512_octets(start_hub, pki):
    """RFC 5321 4.5.3.1.5: a reply line is at most 512 octets with its CRLF; a longer reply (here one quoting a
    505-character unknown verb back) goes out as a multi-line reply, each line with its enhanced code."""
    hub = await start_hub({})
    c = await raw(hub, pki)
    code, text = await c.cmd(b"X" * 505)
    lines = text.split("\n")
    assert code == 500 and len(lines) > 1 and all(len(line) + 2 <= 512 for line in lines), [len(x) for x in lines]
    assert all(line.startswith("500-5.5.2 ") for line in lines[:-1]) and lines[-1].startswith("500 5.5.2 ")
    assert "".join(line[10:] for line in lines).count("X") == 505
    assert (await c.cmd(b"NOOP"))[1] == "250 2.0.0 OK"
    await c.close()


async def test_auth_plain_authorization_identity(start_hub, pki):
    """RFC 4616 2: an authorization identity other than the login asks to act as another account, which no
    account may: 535 5.7.8 (it was ignored, the login taken). Empty or the login itself is the usual case."""
    hub = await start_hub({})
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"])
    other = base64.b64encode(f"other-account\0ch-test\0{PASSWORD}".encode())
    assert (await c.cmd(b"AUTH PLAIN " + other))[1].startswith("535 5.7.8 Authentication failed")
    same = base64.b64encode(f"ch-test\0ch-test\0{PASSWORD}".encode())
    assert (await c.cmd(b"AUTH PLAIN " + same))[1] == "235 2.7.0 Authentication successful"
    await c.close()


async def test_paths_without_angle_brackets_are_taken_as_postfix_takes_them(start_hub, peer, pki):
    """`MAIL FROM:dpi@ch-test.example` and `RCPT TO:dr.martin@...` without angle brackets (older DPI and LIS
    software writes them so; Postfix takes them by default): the same answers and the same delivery as with the
    brackets, parameters after the address included; what is not one address is still a 501."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:" + SENDER + b" SIZE=100"))[1] == "250 2.1.0 Sender OK"
    assert (await c.cmd(b"RCPT TO:dr.martin@medecin.mssante.fr NOTIFY=FAILURE"))[1] == "250 2.1.5 Recipient OK"
    assert (await c.cmd(b"RCPT TO: gp@gmail.com"))[1].startswith("550 5.7.1")       # still no relay
    assert (await c.cmd(b"DATA"))[0] == 354
    code, text = await c.cmd(HEAD % 1 + b".")
    assert code == 250, text
    await wait_for(lambda: len(peer.messages) == 1)
    assert peer.messages[0].mail_from == "dpi@ch-test.example"
    assert peer.messages[0].rcpt_tos == ["dr.martin@medecin.mssante.fr"]
    for line in (b"MAIL FROM:dpi@ch-test.example<x>", b"MAIL FROM:", b"MAIL FROM:dpi@ch-test.example>"):
        assert (await c.cmd(line))[1].startswith("501 5.5.4"), line
    await c.close()


async def test_starttls_in_a_mail_transaction_is_refused(start_hub, conn, pki):
    """As Postfix: STARTTLS after MAIL (here allowed in clear by the client's network) gets 503 5.5.1, the envelope
    given in clear is never carried into the TLS session; after RSET the upgrade goes ahead."""
    from hub.intake import store

    hub = await start_hub({})
    await store.add_account(conn, "net", password_hash=None, cert_subject=None, networks=["127.0.0.0/8"],
                            allow_from=["ch-test.example"], fallback_mailbox=None)
    await hub.accounts.load(conn)
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.smtp_port)
    c = RawSMTP(reader, writer)
    assert (await c.reply())[0] == 220
    assert (await c.cmd(b"EHLO dpi.ch-test.example"))[0] == 250
    assert (await c.cmd(b"MAIL FROM:<" + SENDER + b">"))[0] == 250
    assert (await c.cmd(b"STARTTLS"))[1] == "503 5.5.1 Error: MAIL transaction in progress"
    assert (await c.cmd(b"RSET"))[0] == 250
    assert (await c.cmd(b"STARTTLS"))[0] == 220
    writer.close()
