"""Bad input at the SMTP entry, through a running hub and a raw socket client: malformed MIME (accepted and handled
by the rules, never a 4xx), envelope bytes that are not UTF-8 or hold control characters (5xx, never an internal
error text), over-long lines and header sections (5xx at once), NUL in audit facts (stored, replaced)."""

import asyncio
import base64
import re
import ssl

from hub.audit.store import Event, record, timeline
from tests.integration.conftest import PASSWORD
from tests.support import RawSMTP, wait_for

SENDER = b"dpi@ch-test.example"
RCPT = b"dr.martin@medecin.mssante.fr"
HEAD = (b"From: <dpi@ch-test.example>\r\nTo: <dr.martin@medecin.mssante.fr>\r\nSubject: test\r\n"
        b"Message-ID: <%d@test>\r\nMIME-Version: 1.0\r\n")


async def raw(hub, pki) -> RawSMTP:
    return await RawSMTP.open(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)


def nested(depth: int) -> bytes:
    body = b"Content-Type: text/plain\r\n\r\ninnermost\r\n"
    for n in range(depth):
        body = (b"Content-Type: multipart/mixed; boundary=\"b%d\"\r\n\r\n--b%d\r\n" % (n, n) + body +
                b"--b%d--\r\n" % n)
    return body


MALFORMED = {
    "boundary never occurs": b"Content-Type: multipart/mixed; boundary=\"never-here\"\r\n\r\n"
                             b"--other\r\nContent-Type: text/plain\r\n\r\nbonjour\r\n--other--\r\n",
    "nesting over the limit": nested(12),
    "too many parts": b"Content-Type: multipart/mixed; boundary=\"p\"\r\n\r\n" +
                      b"".join(b"--p\r\nContent-Type: text/plain\r\n\r\npart %d\r\n" % i for i in range(300)) +
                      b"--p--\r\n",
    "headers never end": b"Content-Type: multipart/mixed; boundary=\"h\"\r\nX-Trailing: no empty line follows\r\n",
    "part headers never end": b"Content-Type: multipart/mixed; boundary=\"q\"\r\n\r\n--q\r\nContent-Type: text/plain\r\n",
    "bad base64": b"Content-Type: application/pdf; name=\"cr.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
                  b"%%%% not base64 at all !!!\r\n====\r\n",
    "unknown charset and broken encoded words": b"Content-Type: text/plain; charset=x-unknown-8\r\n"
                                                b"X-Title: =?x-nothing?q?=FF=FE=?= =?utf-8?b?!!!?=\r\n\r\n\xff\xfe\r\n",
    "empty boundary": b"Content-Type: multipart/mixed; boundary=\"\"\r\n\r\n--\r\nhello\r\n----\r\n",
    "garbage content type": b"Content-Type: ;;; =; boundary\r\nContent-Transfer-Encoding: x-what\r\n\r\nbody\r\n",
    "8-bit and NUL bytes": b"X-Raw: caf\xe9 \x00 \xff\r\n\r\nnul \x00 in the body, latin-1 \xe9\r\n",
}


async def test_malformed_mime_is_accepted_and_relayed_as_is_never_4xx(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    sent = {}
    for n, (name, rest) in enumerate(MALFORMED.items()):
        content = HEAD % n + rest
        code, text = await c.send(SENDER, [RCPT], content)
        assert code == 250, f"{name}: {text}"
        sent[text.rsplit(" ", 1)[1]] = (name, content)
    await c.close()
    await wait_for(lambda: len(peer.messages) == len(MALFORMED))
    for m in peer.messages:
        assert any(m.content.endswith(content) for _, content in sent.values())   # relayed as received
    contents = {}
    for mid, (name, _) in sent.items():
        routed = [e for e in await timeline(conn, mid) if e["event"] == "routed"][0]
        contents[name] = routed["facts"]
    for name in ("boundary never occurs", "nesting over the limit", "too many parts"):
        assert contents[name]["content"] == "unparsable" and contents[name]["rule_id"] == "default", name
    assert "never-here" in contents["boundary never occurs"]["unparsable"]
    assert "nesting" in contents["nesting over the limit"]["unparsable"]


async def test_unparsable_mime_is_held_or_refused_as_the_rules_say(start_hub, peer, conn, pki, tmp_path):
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-test.yaml").write_text(
        "rules:\n"
        "  - id: refuse-unreadable\n    match: {content: unparsable, header: {X-Policy: refuse}}\n"
        "    then:\n      reject: {code: 554, enhanced: 5.6.0, text: \"Message structure (MIME) cannot be read\"}\n"
        "  - id: transformed\n    match: {account: ch-test}\n    then:\n      transform: mss_headers\n")
    (rules / "99-catch-all.yaml").write_text("rules:\n  - id: default\n")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(rules)})
    c = await raw(hub, pki)
    broken = MALFORMED["boundary never occurs"]
    code, text = await c.send(SENDER, [RCPT], HEAD % 1 + b"X-Policy: refuse\r\n" + broken)
    assert code == 554 and "5.6.0 Message structure (MIME) cannot be read" in text
    code, text = await c.send(SENDER, [RCPT], HEAD % 2 + broken)
    assert code == 250, text
    mid = text.rsplit(" ", 1)[1]
    await c.close()
    await wait_for(lambda: conn.fetchval("SELECT state = 'held' FROM recipient WHERE message_id = $1", mid))
    reply = await conn.fetchval("SELECT last_reply FROM recipient WHERE message_id = $1", mid)
    assert "transformation failed" in reply and "never-here" in reply
    assert not peer.messages


async def test_envelope_bytes_that_cannot_be_stored_get_a_5xx_without_internals(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    code, ehlo = await c.cmd(b"EHLO dpi.ch-test.example")
    assert code == 250 and "SMTPUTF8" not in ehlo          # not offered: MSSanté addresses are ASCII
    cases = [
        (b"MAIL FROM:<dpi\x00@ch-test.example>", 553, "5.1.7"),
        (b"MAIL FROM:<dpi@ch-test.example\x00>", 553, "5.1.7"),
        (b"MAIL FROM:<dp\xe9@ch-test.example>", 553, "5.1.7"),
        (b"MAIL FROM:<dpi@ch-test.example> ENVID=abc+00def", 501, "5.5.4"),     # a malformed value: 501
        (b"MAIL FROM:<dpi@ch-test.example> SIZE=abc", 501, "5.5.4"),
        (b"MAIL FROM:<dpi@ch-test.example> SIZE=-1", 501, "5.5.4"),
        (b"MAIL FROM:<dpi@ch-test.example> RET=BODY", 501, "5.5.4"),
        (b"MAIL FROM:<dpi@ch-test.example> SMTPUTF8", 555, "5.5.4"),              # not offered: 555
        (b"MAIL FROM:<dpi@ch-test.example>", 250, "2.1.0"),
        (b"RCPT TO:<dr.\xe9@medecin.mssante.fr>", 553, "5.1.3"),               # the battery's case
        (b"RCPT TO:<dr.\xc3\xa9@medecin.mssante.fr>", 553, "5.6.7"),           # valid UTF-8, not ASCII
        (b"RCPT TO:<dr.martin@medecin.mssante.fr\x00>", 553, "5.1.3"),
        (b"RCPT TO:<dr.mar\x01tin@medecin.mssante.fr>", 553, "5.1.3"),
        (b"RCPT TO:<dr.martin@medecin..mssante.fr>", 553, "5.1.3"),
        (b"RCPT TO:<dr.martin@medecin.mssante.fr> ORCPT=rfc822;a+00b@x.fr", 501, "5.5.4"),
        (b"RCPT TO:<dr.martin@medecin.mssante.fr> ORCPT=rfc822;a\xff@x.fr", 501, "5.5.4"),
        (b"RCPT TO:<dr.martin@medecin.mssante.fr> NOTIFY=SOMETIMES", 501, "5.5.4"),
        (b"RCPT TO:<dr.martin@medecin.mssante.fr> XFOO=1", 555, "5.5.4"),
        (b"RCPT TO:<dr.martin@medecin.mssante.fr>", 250, "2.1.5"),
    ]
    for line, want, enhanced in cases:
        code, text = await c.cmd(line)
        assert (code, text[4:9]) == (want, enhanced), (line, text)
        assert "Error" not in text and "DataError" not in text
    assert (await c.cmd(b"RSET"))[0] == 250
    for hello in (b"EHLO dpi\x00.example", b"EHLO dpi\xff.example", b"HELO a\x01b"):
        code, text = await c.cmd(hello)
        assert code == 501 and text.startswith("501 5.5.4"), (hello, text)
    code, text = await c.send(SENDER, [RCPT], HEAD % 1 + b"\r\nstill fine\r\n")
    assert code == 250, text
    await c.close()
    assert await conn.fetchval("SELECT count(*) FROM message") == 1


async def test_no_verb_leaks_an_internal_error(start_hub, pki):
    """Every verb, with arguments no client should send: each reply is a plain SMTP reply (code, text), never
    aiosmtpd's `500 Error: (Exception) ...`, and the session goes on (but after a per-session limit)."""
    hub = await start_hub({})
    nasty = [b"\x00", b"\xff\xfe\xfd", b"caf\xe9", b"\xed\xa0\x80", b"<\x00@x>", b"%s%n%x", b"A" * 600,
             b"<a@b> \x00=\x00", b"FROM:<\xe9@x> SIZE=\x00", b"TO:<a@b> NOTIFY=\xff",
             b"TO:<dr.\xe9@medecin.mssante.fr>", b"TO:<dr.martin@medecin.mssante.fr> ORCPT=rfc822;+00"]
    verbs = [b"HELO", b"EHLO", b"MAIL", b"RCPT", b"DATA", b"RSET", b"NOOP", b"VRFY", b"EXPN", b"HELP", b"AUTH",
             b"BDAT", b"XCLIENT", b"\xff\xfe"]
    c = await raw(hub, pki)
    for verb in verbs:
        for arg in nasty:
            await c.cmd(b"RSET")
            assert (await c.cmd(b"MAIL FROM:<dpi@ch-test.example>"))[0] == 250     # RCPT, DATA: in a transaction
            code, text = await c.cmd(verb + b" " + arg)
            assert re.fullmatch(r"[245]\d\d", str(code)), (verb, arg, text)
            assert not re.search(r"Error: \(|Traceback|Exception|DataError|codec", text), (verb, arg, text)
            if code == 421 or "goodbye" in text:     # over a per-session limit (AUTH, unknown verbs): closed
                await c.close()
                c = await raw(hub, pki)
        assert (await c.cmd(b"NOOP"))[0] == 250
    await c.close()


async def test_lines_over_998_characters_and_huge_headers_are_refused_at_once(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, smtp={"max_message_size": 20_000_000})
    c = await raw(hub, pki)
    unfolded = HEAD % 1 + b"X-Long: " + b"x" * 10_000_000 + b"\r\n\r\nbody\r\n"     # the battery's 10 MB line
    code, text = await c.send(SENDER, [RCPT], unfolded)
    assert code == 554 and text.startswith("554 5.6.0") and "line 6 is 10000008 characters long" in text
    body_line = HEAD % 2 + b"\r\nshort\r\n" + b"y" * 999 + b"\r\nshort\r\n"
    code, text = await c.send(SENDER, [RCPT], body_line)
    assert code == 554 and "line 8 is 999 characters long" in text
    folded = HEAD % 3 + b"X-Big: start\r\n" + b"".join(
        b" " + b"z" * 900 + b"\r\n" for _ in range(400)) + b"\r\nbody\r\n"          # 360 KB of header section
    code, text = await c.send(SENDER, [RCPT], folded)
    assert code == 554 and "header section is" in text and "262144" in text
    many = HEAD % 4 + b"".join(b"X-F%d: v\r\n" % i for i in range(1200)) + b"\r\nbody\r\n"
    code, text = await c.send(SENDER, [RCPT], many)
    assert code == 554 and "more than 1000 header fields" in text
    exact = HEAD % 5 + b"X-Exact: " + b"e" * (998 - len(b"X-Exact: ")) + b"\r\n\r\n" + b"b" * 998 + b"\r\n"
    code, text = await c.send(SENDER, [RCPT], exact)
    assert code == 250, text
    await c.close()
    assert await conn.fetchval("SELECT count(*) FROM message") == 1
    await wait_for(lambda: peer.messages)


async def test_nul_in_an_audited_header_value_is_stored_replaced(start_hub, peer, conn, pki, tmp_path):
    """A rule testing a header puts its value in the routed audit event: a NUL there (from a DPI) made the
    insert fail (451 at every retry). The audit boundary replaces it."""
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "10-test.yaml").write_text("rules:\n  - id: by-ref\n    match: {header: {X-Ref: {regex: \".\"}}}\n")
    (rules / "99-catch-all.yaml").write_text("rules:\n  - id: default\n")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(rules)})
    c = await raw(hub, pki)
    code, text = await c.send(SENDER, [RCPT], HEAD % 1 + b"X-Ref: a\x00b \xff\r\n\r\nbody\r\n")
    assert code == 250, text
    await c.close()
    routed = [e for e in await timeline(conn, text.rsplit(" ", 1)[1]) if e["event"] == "routed"][0]
    assert routed["facts"]["headers"]["x-ref"] == "a\ufffdb \ufffd" and routed["facts"]["rule_id"] == "by-ref"
    await wait_for(lambda: peer.messages)
    assert b"X-Ref: a\x00b \xff\r\n" in peer.messages[0].content              # the message itself is untouched


async def test_no_caller_can_fail_an_audit_insert_with_text_postgresql_refuses(conn):
    bad = "x\x00y \udce9 z"
    async with conn.transaction():
        await record(conn, Event("transformed", message_id="m\x00", sender=bad, recipient=bad, actor=bad,
                                 doc_type=bad, facts={"warnings": [bad, {"k\x00": bad}], "n": 1}))
        await record(conn, Event("a", facts={"w": bad}), Event("b", facts={"w": "\\u0000 as text"}))
    rows = await conn.fetch("SELECT * FROM audit_event ORDER BY id")
    clean = "x\ufffdy \ufffd z"
    assert rows[0]["message_id"] == "m\ufffd" and rows[0]["sender"] == clean and rows[0]["actor"] == clean
    assert rows[0]["facts"] == {"warnings": [clean, {"k\ufffd": clean}], "n": 1}
    assert rows[1]["facts"] == {"w": clean} and rows[2]["facts"] == {"w": "\\u0000 as text"}
    await asyncio.sleep(0)


async def test_a_next_hop_replying_with_bytes_that_cannot_be_stored(start_hub, peer, conn, pki):
    """The other side is untrusted too: a reply with NUL and bytes that are not UTF-8 is recorded (replaced), the
    bounce goes out, and the delivery stage keeps recording the next outcomes."""
    async def serve(reader, writer):
        writer.write(b"220 odd.example ESMTP\r\n")
        while line := await reader.readline():
            verb = line[:4].upper()
            writer.write({b"EHLO": b"250 odd.example\r\n", b"MAIL": b"250 ok\r\n",
                          b"RCPT": b"550 5.1.1 caf\xe9 \x00 \xff\xfe unknown\r\n", b"RSET": b"250 ok\r\n",
                          b"QUIT": b"221 bye\r\n"}.get(verb, b"502 no\r\n"))
            await writer.drain()
            if verb == b"QUIT":
                break
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        hub = await start_hub({"ch-test.example": port, "medecin.mssante.fr": peer.port_})
        c = await raw(hub, pki)
        code, text = await c.send(SENDER, [b"archives@ch-test.example"], HEAD % 1 + b"\r\nbody\r\n")
        assert code == 250, text
        mid = text.rsplit(" ", 1)[1]
        await wait_for(lambda: conn.fetchval("SELECT state = 'bounced' FROM recipient WHERE message_id = $1", mid))
        reply = await conn.fetchval("SELECT last_reply FROM recipient WHERE message_id = $1", mid)
        assert reply == "550 5.1.1 caf\ufffd \ufffd \ufffd\ufffd unknown"
        code, text = await c.send(SENDER, [RCPT], HEAD % 2 + b"\r\nnext\r\n")     # the stage goes on
        assert code == 250
        await c.close()
        await wait_for(lambda: conn.fetchval("SELECT state = 'delivered' FROM recipient WHERE message_id = $1",
                                             text.rsplit(" ", 1)[1]))
        # the failure notice to the sender was recorded too (its next hop is the same odd server: bounced)
        assert await conn.fetchval("SELECT count(*) FROM message WHERE mail_from = ''") == 1
    finally:
        server.close()


async def test_every_reply_is_ascii_with_an_enhanced_status_code(start_hub, pki):
    """ENHANCEDSTATUSCODES is offered, so every 2xx/4xx/5xx reply after the greeting carries one (RFC 2034),
    aiosmtpd's own replies included; SMTPUTF8 is not, so no reply carries a byte outside ASCII."""
    hub = await start_hub({})
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.smtp_port)
    c = RawSMTP(reader, writer)
    assert (await c.reply())[0] == 220                     # the greeting: no enhanced code (RFC 2034)
    before_hello = [(b"MAIL FROM:<a@b.example>", "503 5.5.1"), (b"NOOP", "250 2.0.0"), (b"BDAT 10 LAST", "500 5.5.2"),
                    (b"X" * 600, "500 5.5.2"), (b"HELO", "501 5.5.4")]
    for line, want in before_hello:
        assert (await c.cmd(line))[1].startswith(want), line
    code, ehlo = await c.cmd(b"EHLO dpi.ch-test.example")
    assert code == 250 and ehlo.splitlines()[0] == "250-hub.example.org"     # the EHLO reply itself: none
    cases = [(b"AUTH PLAIN AGZvbwBiYXI=", "538 5.7.11"), (b"VRFY root", "252 2.0.0"), (b"EXPN staff", "502 5.5.1"),
             (b"STARTTLS now", "501 5.5.4"), (b"RSET", "250 2.0.0"), (b"NOOP", "250 2.0.0"),
             (b"STARTTLS", "220 2.0.0")]
    for line, want in cases:
        assert (await c.cmd(line))[1].startswith(want), line
    await writer.start_tls(ssl.create_default_context(cafile=str(pki["ca_file"])), server_hostname="localhost")
    assert (await c.cmd(b"EHLO dpi.ch-test.example"))[0] == 250
    assert (await c.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0ch-test\0{PASSWORD}".encode())))[0] == 235
    assert (await c.cmd(b"AUTH PLAIN AGZvbwBiYXI="))[1].startswith("503 5.5.1")          # already authenticated
    assert (await c.cmd(b"MAIL FROM:<dpi@ch-test.example>"))[0] == 250
    writer.write(b"RCPT TO:<victim@relay.example>\r\n")
    line = await reader.readline()
    assert line.startswith(b"550 5.7.1 Relay access denied") and line.isascii() and b"MSSante trust space" in line
    assert (await c.cmd(b"QUIT"))[1].startswith("221 2.0.0")
    writer.close()
    c = await raw(hub, pki)                               # STARTTLS once TLS is up: refused, not a nested TLS
    assert (await c.cmd(b"STARTTLS"))[1] == "503 5.5.1 TLS already active"
    assert (await c.cmd(b"NOOP"))[0] == 250
    await c.close()
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"])   # an AUTH response longer than a line: refused, in step
    assert (await c.cmd(b"AUTH LOGIN"))[0] == 334
    assert (await c.cmd(b"Q" * 5000))[1] == "500 5.5.6 Authentication line too long"
    assert (await c.cmd(b"NOOP"))[1] == "250 2.0.0 OK"
    assert (await c.cmd(b"AUTH PLAIN"))[0] == 334
    assert (await c.cmd(b"%%%"))[1] == "501 5.5.2 Can't decode base64"
    assert (await c.cmd(b"NOOP"))[1] == "250 2.0.0 OK"
    await c.close()


async def test_source_routes_are_dropped_and_orcpt_needs_both_parts(start_hub, peer, conn, pki):
    """`<@relay.example:dpi@ch-test.example>` is the mailbox after the route (RFC 5321 4.1.1.3): the route is
    neither stored nor relayed, and a route never turns a foreign destination into a local one."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<@relay.example,@other.example:dpi@ch-test.example>"))[0] == 250
    code, text = await c.cmd(b"RCPT TO:<@hub.example.org:victim@relay.example>")
    assert code == 550 and "relay.example" in text
    for bad in (b"ORCPT=;", b"ORCPT=rfc822;", b"ORCPT=;dr@x.fr"):
        code, text = await c.cmd(b"RCPT TO:<dr.martin@medecin.mssante.fr> " + bad)
        assert text.startswith("501 5.5.4") and "ORCPT" in text, bad
    assert (await c.cmd(b"RCPT TO:<@relay.example:dr.martin@medecin.mssante.fr> ORCPT=rfc822;dr@x.fr"))[0] == 250
    assert (await c.cmd(b"DATA"))[0] == 354
    code, text = await c.cmd(HEAD % 7 + b"\r\nrouted\r\n.")
    assert code == 250, text
    await c.close()
    await wait_for(lambda: len(peer.messages) == 1)
    assert peer.messages[0].mail_from == "dpi@ch-test.example"
    assert peer.messages[0].rcpt_tos == ["dr.martin@medecin.mssante.fr"]
    assert await conn.fetchval("SELECT mail_from FROM message") == "dpi@ch-test.example"


async def test_a_slow_upload_is_not_cut_by_the_session_timeout(start_hub, peer, pki):
    """smtp.session_timeout is the client's silence: a message that keeps coming for longer than that (a large
    letter over a slow link) is received whole."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, smtp={"session_timeout": 1.0})
    c = await raw(hub, pki)
    assert (await c.cmd(b"MAIL FROM:<dpi@ch-test.example>"))[0] == 250
    assert (await c.cmd(b"RCPT TO:<dr.martin@medecin.mssante.fr>"))[0] == 250
    assert (await c.cmd(b"DATA"))[0] == 354
    c.writer.write(HEAD % 8 + b"\r\n")
    for n in range(5):                        # 2.5 s in all, never 1 s of silence
        await asyncio.sleep(0.5)
        c.writer.write(b"line %d of a letter sent slowly\r\n" % n)
    c.writer.write(b".\r\n")
    code, text = await c.reply()
    assert code == 250, text
    await c.close()
    await wait_for(lambda: len(peer.messages) == 1)        # delivered whole (and no delivery left in flight)
    assert b"line 4 of a letter sent slowly" in peer.messages[0].content
