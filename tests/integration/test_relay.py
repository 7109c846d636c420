"""The relay core end to end: real smtplib client with STARTTLS and AUTH, the hub, real trust-space peers that
require the hub's client certificate, real PostgreSQL."""

import asyncio
import email
import smtplib
import threading

import pytest
from structlog.testing import capture_logs

from hub.audit.store import timeline
from tests.integration.conftest import PASSWORD
from tests.support import Client, Peer, _send, free_port, message, wait_for

SENDER = "dpi@ch-test.example"


def client(hub, pki, **kw):
    kw.setdefault("user", "ch-test")
    kw.setdefault("password", PASSWORD)
    return Client(hub.smtp_port, pki["ca_file"], **kw)


def queued_id(reply) -> str:
    code, text = reply
    assert code == 250, reply
    assert text.startswith("2.0.0 queued as "), text
    return text.rsplit(" ", 1)[1]


async def states(conn, message_id):
    return {r["address"]: r["state"] for r in
            await conn.fetch("SELECT address, state FROM recipient WHERE message_id = $1", message_id)}


async def test_delivers_with_client_certificate_over_verified_tls(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    mid = queued_id(await client(hub, pki).send(SENDER, ["dr.martin@medecin.mssante.fr"], message()))
    await wait_for(lambda: peer.messages)
    got = peer.messages[0]
    assert got.rcpt_tos == ["dr.martin@medecin.mssante.fr"]
    assert got.client_subject and "CN=hub.example.org" in got.client_subject
    assert got.tls_version in ("TLSv1.2", "TLSv1.3")
    parsed = email.message_from_bytes(got.content)
    assert parsed["Subject"] == "Lettre de liaison"
    assert parsed["Received"].startswith("from dpi.ch-test.example")
    assert b"\r\n.leading dot line\r\n" in got.content          # dot-stuffing undone and redone correctly
    await wait_for(lambda: _state(conn, mid, "done"))
    events = [e["event"] for e in await timeline(conn, mid)]
    assert events[:1] == ["received"] and events[-1] == "delivered"
    attempt = next(e for e in await timeline(conn, mid) if e["event"] == "delivered")     # the attempt's record
    assert attempt["facts"]["tls"] in ("TLSv1.2", "TLSv1.3")
    assert "smtp.operator.example" in attempt["facts"]["peer_certificate"]
    assert attempt["facts"]["reply"].startswith("250")


async def _state(conn, mid, state):
    return await conn.fetchval("SELECT state FROM message WHERE id = $1", mid) == state


async def test_message_to_two_domains_goes_in_one_transaction_per_domain(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "labo.mssante.fr": peer.port_})
    rcpts = ["a@medecin.mssante.fr", "b@medecin.mssante.fr", "c@labo.mssante.fr"]
    mid = queued_id(await client(hub, pki).send(SENDER, rcpts, message()))
    await wait_for(lambda: _state(conn, mid, "done"))
    assert sorted(sorted(m.rcpt_tos) for m in peer.messages) == [["a@medecin.mssante.fr", "b@medecin.mssante.fr"],
                                                                 ["c@labo.mssante.fr"]]
    assert set((await states(conn, mid)).values()) == {"delivered"}


async def test_destination_down_then_back_is_delivered_after_retry(start_hub, conn, pki):
    port = free_port()
    hub = await start_hub({"down.mssante.fr": port})
    mid = queued_id(await client(hub, pki).send(SENDER, ["x@down.mssante.fr"], message()))
    await wait_for(lambda: conn.fetchval("SELECT attempts > 0 FROM recipient WHERE message_id = $1", mid))
    row = await conn.fetchrow("SELECT state, last_reply FROM recipient WHERE message_id = $1", mid)
    assert row["state"] == "queued" and row["last_reply"].startswith("4.4.1 cannot connect")
    late = Peer(pki, port=port)
    late.start()
    try:
        await wait_for(lambda: late.messages, timeout=30)
        await wait_for(lambda: _state(conn, mid, "done"))
    finally:
        late.stop()
    events = [e["event"] for e in await timeline(conn, mid)]
    assert "deferred" in events and events[-1] == "delivered"


async def test_permanent_failure_sends_a_dsn_to_the_sender(start_hub, peer, sender_mta, conn, pki):
    peer.handler_obj.rcpt_replies["gone@medecin.mssante.fr"] = "550 5.1.1 No such mailbox"
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "ch-test.example": sender_mta.port_})
    mid = queued_id(await client(hub, pki).send(
        SENDER, ["gone@medecin.mssante.fr", "ok@medecin.mssante.fr"], message(),
        mail_options=["ENVID=LDL-42", "RET=HDRS"], rcpt_options=["NOTIFY=FAILURE"]))
    await wait_for(lambda: sender_mta.messages)
    note = sender_mta.messages[0]
    assert note.mail_from in ("", "<>") and note.rcpt_tos == [SENDER]    # null sender
    parsed = email.message_from_bytes(note.content)
    assert parsed.get_content_type() == "multipart/report"
    status = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"][0]
    fields = [dict(b) for b in status.get_payload()]
    assert fields[0]["Original-Envelope-Id"] == "LDL-42"
    assert fields[1]["Final-Recipient"] == "rfc822; gone@medecin.mssante.fr"
    assert fields[1]["Action"] == "failed" and fields[1]["Status"] == "5.1.1"
    assert [m.rcpt_tos for m in peer.messages] == [["ok@medecin.mssante.fr"]]
    assert await states(conn, mid) == {"gone@medecin.mssante.fr": "bounced", "ok@medecin.mssante.fr": "delivered"}
    events = [e["event"] for e in await timeline(conn, mid)]
    assert "bounced" in events and "notification_sent" in events


async def test_success_notice_when_asked(start_hub, peer, sender_mta, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "ch-test.example": sender_mta.port_})
    queued_id(await client(hub, pki).send(SENDER, ["ok@medecin.mssante.fr"], message(),
                                          rcpt_options=["NOTIFY=SUCCESS,FAILURE"]))
    await wait_for(lambda: sender_mta.messages)
    parsed = email.message_from_bytes(sender_mta.messages[0].content)
    status = [p for p in parsed.walk() if p.get_content_type() == "message/delivery-status"][0]
    assert [dict(b) for b in status.get_payload()][1]["Action"] == "delivered"
    # and the peer was told what the sender asked for
    assert any(o.startswith("NOTIFY=") for o in peer.messages[0].rcpt_options)


async def test_unlisted_domain_and_open_relay_are_refused(start_hub, pki):
    hub = await start_hub({})
    c = client(hub, pki)

    def probe(s: smtplib.SMTP):
        out = {}
        s.mail(SENDER)
        out["unlisted"] = s.rcpt("someone@gmail.com")
        out["hub_domain"] = s.rcpt("nobody@hub.example.org")
        s.rset()
        out["foreign_sender"] = s.mail("ceo@other-hospital.example")
        return out

    def after_tls(s):
        return {e: s.has_extn(e) for e in ("auth", "starttls", "dsn", "pipelining")}, s.esmtp_features.get("auth")

    features, mechanisms = await c.session(after_tls)
    assert features == {"auth": True, "starttls": False, "dsn": True, "pipelining": True}
    assert set(mechanisms.split()) == {"PLAIN", "LOGIN"}
    out = await c.session(probe)
    assert out["unlisted"][0] == 550 and out["unlisted"][1].startswith(b"5.7.1 Relay access denied")
    assert out["hub_domain"][0] == 550 and out["hub_domain"][1].startswith(b"5.1.1")
    assert out["foreign_sender"][0] == 550 and out["foreign_sender"][1].startswith(b"5.7.1")

    anonymous = Client(hub.smtp_port, pki["ca_file"])          # TLS but no login
    assert (await anonymous.send(SENDER, ["a@medecin.mssante.fr"], message()))[0] == 530

    def no_tls(s):
        assert not s.has_extn("auth")                           # AUTH only after STARTTLS
        for ext in ("starttls", "size", "8bitmime", "pipelining", "enhancedstatuscodes", "dsn"):
            assert s.has_extn(ext), ext
        return s.docmd("AUTH", "PLAIN AGNoLXRlc3QAeA==")

    plain = Client(hub.smtp_port, pki["ca_file"], tls=False)
    code, text = await plain.session(no_tls)
    assert code == 538 and text.startswith(b"5.7.11")


async def test_bad_credentials_and_rate_limit(start_hub, pki):
    import base64

    hub = await start_hub({})                      # auth_failures_per_minute = 3 in the test settings
    bad = base64.b64encode(b"\0ch-test\0wrong password!").decode()
    good = base64.b64encode(f"\0ch-test\0{PASSWORD}".encode()).decode()

    def attempts(s: smtplib.SMTP):
        replies = [s.docmd("AUTH", f"PLAIN {bad}") for _ in range(3)]
        replies.append(s.docmd("AUTH", f"PLAIN {good}"))     # right password, but this IP is blocked now
        return replies

    replies = await Client(hub.smtp_port, pki["ca_file"]).session(attempts)
    assert [(c, t[:5]) for c, t in replies[:3]] == [(535, b"5.7.8")] * 3
    assert replies[3][0] == 421 and replies[3][1].startswith(b"4.7.0")
    with pytest.raises((smtplib.SMTPServerDisconnected, smtplib.SMTPAuthenticationError)):
        await client(hub, pki).send(SENDER, ["a@medecin.mssante.fr"], message())


async def test_parallel_logins_with_the_right_password_are_never_refused(start_hub, pki):
    """A lab opening many sessions at once from one address (cold credential cache): every login succeeds, the
    password verifications wait for a free slot instead of counting against the limit (3 in the test settings)."""
    import base64

    from tests.support import RawSMTP

    hub = await start_hub({})
    good = b"AUTH PLAIN " + base64.b64encode(f"\0ch-test\0{PASSWORD}".encode())

    async def login() -> int:
        c = await RawSMTP.open(hub.smtp_port, pki["ca_file"])
        try:
            return (await c.cmd(good))[0]
        finally:
            await c.close()

    assert await asyncio.gather(*(login() for _ in range(12))) == [235] * 12

async def test_oversized_message_is_refused(start_hub, peer, pki, conn):
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = client(hub, pki)
    code, text = await c.send(SENDER, ["a@medecin.mssante.fr"], message(), mail_options=["SIZE=5000000"])
    assert code == 552 and text.startswith("5.3.4")
    code, text = await c.send(SENDER, ["a@medecin.mssante.fr"], message(size=1_200_000))
    assert code == 552 and text.startswith("5.3.4")
    assert await conn.fetchval("SELECT count(*) FROM message") == 0


async def test_bad_parameters_get_enhanced_codes(start_hub, pki):
    hub = await start_hub({})

    def probe(s):
        return (s.docmd("MAIL", "FROM:<dpi@ch-test.example> NOTIFY=SOMETIMES"), s.docmd("MAIL", "FROM:"),
                s.docmd("MAIL", "FROM: nonsense"))

    (c1, t1), (c2, t2), (c3, t3) = await client(hub, pki).session(probe)
    assert c1 == 555 and t1.startswith(b"5.5.4")
    assert c2 == 501 and t2.startswith(b"5.5.4")
    assert c3 == 553 and t3.startswith(b"5.1.7")     # no brackets: taken as an address, and not one


async def test_certificate_login(start_hub, peer, conn, pki):
    from cryptography import x509

    subject = x509.load_pem_x509_certificate(pki["establishment"][0].read_bytes()).subject.rfc4514_string()
    # the operator may write the DN in another order and spacing
    written = ", ".join(reversed(subject.split(",")))
    await conn.execute("INSERT INTO account (name, cert_subject, allow_from) VALUES ($1, $2, $3)",
                       "ch-cert", written, ["ch-test.example"])
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = Client(hub.smtp_port, pki["ca_file"], client_cert=pki["establishment"])
    queued_id(await c.send(SENDER, ["a@medecin.mssante.fr"], message()))
    await wait_for(lambda: peer.messages)


async def test_certificate_identifies_every_message_of_its_connection_and_only_it(start_hub, peer, conn, pki):
    """The certificate's subject is read once per TLS session (kept on the SMTP session): every message of the
    connection is the certificate's account, logged in by certificate; a connection without one is not."""
    from cryptography import x509

    subject = x509.load_pem_x509_certificate(pki["establishment"][0].read_bytes()).subject.rfc4514_string()
    await conn.execute("INSERT INTO account (name, cert_subject, allow_from) VALUES ($1, $2, $3)",
                       "ch-cert", subject, ["ch-test.example"])
    hub = await start_hub({"medecin.mssante.fr": peer.port_})

    def two(s):
        return [_send(s, SENDER, ["a@medecin.mssante.fr"], message(), [], []) for _ in range(2)]

    ids = [queued_id(r) for r in await Client(hub.smtp_port, pki["ca_file"],
                                              client_cert=pki["establishment"]).session(two)]
    for mid in ids:
        assert await conn.fetchval("SELECT account FROM message WHERE id = $1", mid) == "ch-cert"
        received = (await timeline(conn, mid))[0]
        assert received["event"] == "received" and received["facts"]["login"] == "certificate"
    code, _ = await Client(hub.smtp_port, pki["ca_file"]).send(SENDER, ["a@medecin.mssante.fr"], message())
    assert code == 530


async def test_network_bound_account_needs_no_login(start_hub, peer, conn, pki):
    await conn.execute("INSERT INTO account (name, networks, allow_from) VALUES ($1, $2::cidr[], $3)",
                       "lab-net", ["127.0.0.0/8"], ["labo-ville.example"])
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = Client(hub.smtp_port, pki["ca_file"], tls=False)
    mid = queued_id(await c.send("sil@labo-ville.example", ["a@medecin.mssante.fr"], message()))
    assert await conn.fetchval("SELECT account FROM message WHERE id = $1", mid) == "lab-net"
    code, _ = await c.send("spoof@elsewhere.example", ["a@medecin.mssante.fr"], message())
    assert code == 550


async def test_peer_with_untrusted_certificate_is_not_delivered_to(start_hub, pki, conn):
    rogue = Peer(pki, server_cert=pki["rogue_server"])
    rogue.start()
    try:
        hub = await start_hub({"rogue.mssante.fr": rogue.port_})
        mid = queued_id(await client(hub, pki).send(SENDER, ["x@rogue.mssante.fr"], message()))
        await wait_for(lambda: conn.fetchval("SELECT attempts > 0 FROM recipient WHERE message_id = $1", mid))
        reply = await conn.fetchval("SELECT last_reply FROM recipient WHERE message_id = $1", mid)
        assert reply.startswith("4.7.5") and not rogue.messages
    finally:
        rogue.stop()


async def test_pipelined_commands_get_their_replies_in_order(start_hub, peer, conn, pki):
    """RFC 2920: MAIL, RCPT, RCPT and DATA sent in one write get four replies, in order (the 250s may be written
    together); a refused RCPT among them does not disturb the others; then the message is queued."""
    import asyncio

    await conn.execute("INSERT INTO account (name, networks, allow_from) VALUES ($1, $2::cidr[], $3)",
                       "lab-net", ["127.0.0.0/8"], ["labo-ville.example"])
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.smtp_port)

    async def replies(n: int) -> list[bytes]:
        out = []
        while len(out) < n:
            line = await asyncio.wait_for(reader.readline(), 10)
            assert line, "connection closed"
            if line[3:4] != b"-":
                out.append(line[:3])
        return out

    assert await replies(1) == [b"220"]
    writer.write(b"EHLO lab.example\r\n")
    assert await replies(1) == [b"250"]
    writer.write(b"MAIL FROM:<sil@labo-ville.example>\r\nRCPT TO:<a@medecin.mssante.fr>\r\n"
                 b"RCPT TO:<x@not-in-the-trust-space.example>\r\nDATA\r\n")
    assert await replies(4) == [b"250", b"250", b"550", b"354"]
    writer.write(b"Subject: pipelined\r\n\r\n..dot line\r\nbody\r\n.\r\nQUIT\r\n")
    assert await replies(2) == [b"250", b"221"]
    writer.close()
    await wait_for(lambda: peer.messages)
    assert b"\r\n.dot line\r\n" in peer.messages[0].content


async def test_delivery_pipelines_with_a_peer_that_offers_it(start_hub, peer, conn, pki):
    """RFC 2920 on the delivery side: MAIL, the RCPTs and DATA reach the peer in one write; a refused RCPT among
    them bounces alone, and a DATA refusal after pipelined RCPTs defers the message."""
    peer.handler_obj.pipelining = True
    peer.handler_obj.rcpt_replies["gone@medecin.mssante.fr"] = "550 5.1.1 No such mailbox"
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    rcpts = ["a@medecin.mssante.fr", "gone@medecin.mssante.fr", "b@medecin.mssante.fr"]
    mid = queued_id(await client(hub, pki).send(SENDER, rcpts, message()))
    await wait_for(lambda: _state(conn, mid, "done"))
    assert [sorted(m.rcpt_tos) for m in peer.messages] == [["a@medecin.mssante.fr", "b@medecin.mssante.fr"]]
    assert peer.handler_obj.data_already_sent == [True, True, True]
    assert await states(conn, mid) == {"a@medecin.mssante.fr": "delivered", "gone@medecin.mssante.fr": "bounced",
                                       "b@medecin.mssante.fr": "delivered"}
    peer.handler_obj.data_reply = "451 4.3.0 try later"
    mid = queued_id(await client(hub, pki).send(SENDER, ["c@medecin.mssante.fr"], message()))
    await wait_for(lambda: conn.fetchval("SELECT attempts > 0 FROM recipient WHERE message_id = $1", mid))
    row = await conn.fetchrow("SELECT state, last_reply FROM recipient WHERE message_id = $1", mid)
    assert row["state"] == "queued" and row["last_reply"].startswith("451 4.3.0")


async def test_the_accepting_process_delivers_without_the_queue(start_hub, peer, conn, pki):
    """A message accepted while the process has a free delivery slot is written with its recipient already leased
    to that process and sent at once, from memory: without any wake-up or poll of the queue."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, delivery={"poll_interval": 600})
    hub.handler.on_queued = None                 # nothing wakes the worker's queue loop any more
    mid = queued_id(await client(hub, pki).send(SENDER, ["dr.martin@medecin.mssante.fr"], message()))
    await wait_for(lambda: _state(conn, mid, "done"), timeout=10)
    row = await conn.fetchrow("SELECT recoveries, attempts, lease_owner FROM recipient WHERE message_id = $1", mid)
    assert (row["recoveries"], row["attempts"], row["lease_owner"]) == (0, 1, None)


async def test_a_claim_leases_no_more_recipients_than_free_slots(start_hub, peer, conn, pki):
    """With one delivery slot, recipients queued while it is busy are claimed one at a time: the others stay
    unleased, free for any process or node, instead of leased and left waiting for the slot (their lease could
    expire meanwhile and another worker send them too)."""
    import threading

    peer.handler_obj.gate = gate = threading.Semaphore(0)
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, delivery={"workers": 1})
    try:
        first = queued_id(await client(hub, pki).send(SENDER, ["a@medecin.mssante.fr"], message()))  # in the slot
        others = [queued_id(await client(hub, pki).send(SENDER, [f"{n}@medecin.mssante.fr"], message()))
                  for n in ("b", "c", "d")]
        gate.release()                            # the first one goes through; the slot claims from the queue
        await wait_for(lambda: _state(conn, first, "done"))
        await asyncio.sleep(1.0)                  # several polls (delivery.poll_interval 0.2 s)
        leased = await conn.fetchval("SELECT count(*) FROM recipient WHERE message_id = ANY($1)"
                                     " AND lease_until IS NOT NULL", others)
        assert leased == 1
    finally:
        gate.release(10)
    await wait_for(lambda: conn.fetchval("SELECT bool_and(state = 'delivered') FROM recipient WHERE message_id"
                                         " = ANY($1)", others), timeout=30)


async def test_a_multi_line_reply_goes_out_in_one_write(start_hub, pki):
    """The EHLO reply's lines are written together (one segment for the client to read, not one per line)."""
    hub = await start_hub({})
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.smtp_port)
    try:
        assert (await asyncio.wait_for(reader.readline(), 10))[:3] == b"220"
        session = next(iter(hub.handler.sessions))
        writes: list[bytes] = []
        real = session._writer.write
        session._writer.write = lambda data: (writes.append(bytes(data)), real(data))[1]
        writer.write(b"EHLO lab.example\r\n")
        lines = []
        while not lines or lines[-1][3:4] != b" ":
            lines.append(await asyncio.wait_for(reader.readline(), 10))
        assert len(lines) > 3 and b"PIPELINING" in b"".join(lines)
        assert writes == [b"".join(lines)]
    finally:
        writer.close()


async def test_the_250_is_on_the_wire_before_the_hand_over_to_delivery(start_hub, peer, conn, pki):
    """What follows the commit (hand-over to this process's delivery worker, log line, metrics) runs once the 250
    is written: the client holds its reply before the hand-over starts. The hand-over below blocks the hub's event
    loop until the client thread has the reply; had the 250 been held behind it, the client would have nothing."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    replied = threading.Event()
    seen: list[bool] = []
    hand_over = hub.handler.delivery.hand_over

    def observed(*args):
        seen.append(replied.wait(10))        # a bound for the failing case only: the reply is normally there
        hand_over(*args)

    hub.handler.delivery.hand_over = observed

    def send(s):
        reply = _send(s, SENDER, ["dr.martin@medecin.mssante.fr"], message(), [], [])
        replied.set()
        return reply

    mid = queued_id(await client(hub, pki).session(send))
    assert seen == [True]
    await wait_for(lambda: _state(conn, mid, "done"))          # and the hand-over delivered it
    assert len(peer.messages) == 1


async def test_a_failure_after_the_commit_does_not_change_the_250(start_hub, peer, conn, pki):
    """Once the message is committed its reply is 250, whatever fails after (here the hand-over to delivery):
    a 451 then would make the client send it again, a duplicate. The committed message waits for its lease."""
    hub = await start_hub({"medecin.mssante.fr": peer.port_})

    def broken(*args):
        raise RuntimeError("hand-over bug")

    hub.handler.delivery.hand_over = broken
    with capture_logs() as logs:
        mid = queued_id(await client(hub, pki).send(SENDER, ["dr.martin@medecin.mssante.fr"], message()))
    assert await conn.fetchval("SELECT count(*) FROM recipient WHERE message_id = $1 AND lease_owner IS NOT NULL",
                               mid) == 1
    failed = [e for e in logs if e["event"] == "after_queued_failed"]
    assert [(e["message_id"], e["error"]) for e in failed] == [(mid, "RuntimeError")]
    assert not any(e["event"] == "message_queued" for e in logs)
