"""The SMTP session itself, through a running hub and a raw socket client: the hub's command loop
(hub.intake.protocol) ends a session at QUIT without running anything pipelined after it, restarts the session
timeout at each valid command only, and answers EHLO with the same lines aiosmtpd's EHLO had, before and after
STARTTLS."""

import asyncio
import base64
import ssl

from tests.integration.conftest import PASSWORD
from tests.support import RawSMTP

async def _connect(hub) -> RawSMTP:
    reader, writer = await asyncio.open_connection("127.0.0.1", hub.smtp_port)
    c = RawSMTP(reader, writer)
    code, text = await c.reply()
    assert (code, text) == (220, "220 hub.example.org hub ESMTP")
    return c


async def _closed(c: RawSMTP) -> bool:
    """True once the hub has closed the connection (whatever it still sent before is read and dropped)."""
    while True:
        if not await asyncio.wait_for(c.reader.read(4096), 30):
            return True


async def test_quit_ends_the_session_and_nothing_pipelined_after_it_runs(start_hub, pki):
    hub = await start_hub({})
    c = await _connect(hub)
    assert (await c.cmd(b"QUIT now"))[1] == "501 5.5.4 Syntax: QUIT"          # not a QUIT: the session goes on
    c.writer.write(b"EHLO dpi.ch-test.example\r\nNOOP\r\nQUIT\r\nNOOP\r\nMAIL FROM:<dpi@ch-test.example>\r\n")
    assert (await c.reply())[0] == 250
    assert (await c.reply())[1] == "250 2.0.0 OK"
    assert (await c.reply())[1] == "221 2.0.0 Bye"
    assert await asyncio.wait_for(c.reader.read(4096), 30) == b""              # closed; no reply after the 221
    c.writer.close()
    c = await _connect(hub)                                                   # the next session is a new one
    for line in (b"MAIL FROM:<dpi@ch-test.example>", b"RCPT TO:<dr.martin@medecin.mssante.fr>", b"DATA"):
        assert (await c.cmd(line))[1] == "503 5.5.1 Error: send HELO first", line
    await c.close()


async def test_the_session_timeout_counts_the_silence_since_the_last_valid_command(start_hub, pki):
    hub = await start_hub({}, smtp={"session_timeout": 1.0})
    c = await _connect(hub)
    assert (await c.cmd(b"EHLO dpi.ch-test.example"))[0] == 250
    for _ in range(6):                       # 2.4 s of commands, never 1 s without one: the session stays open
        await asyncio.sleep(0.4)
        assert (await c.cmd(b"NOOP"))[1] == "250 2.0.0 OK"
    assert await _closed(c)                  # then silence: the hub closes the session
    c.writer.close()
    c = await _connect(hub)
    assert (await c.cmd(b"EHLO dpi.ch-test.example"))[0] == 250
    for _ in range(3):                       # commands it does not know do not keep a session open
        await asyncio.sleep(0.4)
        c.writer.write(b"XYZZY\r\n")
    assert await _closed(c)
    c.writer.close()


async def test_the_ehlo_reply_lists_the_extensions_offered_before_and_after_starttls(start_hub, pki):
    hub = await start_hub({})
    size = hub.settings.smtp.max_message_size
    c = await _connect(hub)
    code, text = await c.cmd(b"EHLO dpi.ch-test.example")
    assert code == 250
    assert text.splitlines() == ["250-hub.example.org", f"250-SIZE {size}", "250-8BITMIME", "250-STARTTLS",
                                 "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN", "250 HELP"]
    assert (await c.cmd(b"EHLO dpi.ch-test.example"))[1] == text                # a second EHLO: the same
    assert (await c.cmd(b"HELO dpi.ch-test.example"))[1] == "250 hub.example.org"
    assert (await c.cmd(b"EHLO"))[1] == "501 5.5.4 Syntax: EHLO hostname"
    assert (await c.cmd(b"EHLO dpi.ch-test.example"))[0] == 250
    assert (await c.cmd(b"STARTTLS"))[0] == 220
    await c.writer.start_tls(ssl.create_default_context(cafile=str(pki["ca_file"])), server_hostname="localhost")
    code, text = await c.cmd(b"EHLO dpi.ch-test.example")
    assert code == 250
    assert text.splitlines() == ["250-hub.example.org", f"250-SIZE {size}", "250-8BITMIME", "250-AUTH LOGIN PLAIN",
                                 "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN", "250 HELP"]
    assert (await c.cmd(b"AUTH PLAIN AGNoLXRlc3QAd3Jvbmc="))[0] == 535
    assert (await c.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0ch-test\0{PASSWORD}".encode())))[0] == 235
    assert (await c.cmd(b"MAIL FROM:<dpi@ch-test.example>"))[0] == 250
    assert (await c.cmd(b"QUIT"))[1] == "221 2.0.0 Bye"
    await c.close()
