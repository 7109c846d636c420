"""The SMTP client side: connections to next hops, kept open and reused, with mandatory STARTTLS and the hub's
client certificate, and per-recipient outcomes for one SMTP transaction.

Outcomes: `delivered` (2xx after DATA), `temporary` (4xx, timeout, TLS or connection failure), `permanent` (5xx).
Every call has a timeout; a timeout is temporary, never a hang and never a bounce.
`revocation_refusal` checks a verified peer's certificate against its CRLs (hub.revocation), for the trust space.
Settings read: delivery.connect_timeout, delivery.command_timeout, smtp.hostname, delivery.strict_operator_dn.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import time
from dataclasses import dataclass, field

from cryptography import x509

from hub.db import storable
from hub.delivery.nexthop import NextHop, client_tls_context
from hub.errors import TemporaryError

_LINE_ENDS = re.compile(rb"\r\n|\n|\r(?!\n)")
_MAX_REPLY_LINES = 100
_READ_LIMIT = 64 * 1024


class ReplyError(Exception):
    """The peer's reply could not be read: connection closed, malformed or too long."""


_NETWORK_ERRORS = (ReplyError, OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError, EOFError)


class WireBody(bytes):
    """A message already in the form DATA carries it, but for the final `.` CRLF: CRLF line ends throughout (no bare
    CR or LF), ending with CRLF (or empty), no line starting with a dot. Intake makes one of the message it has just
    read when that message was so (most are), and a delivery from memory then sends it without scanning it again
    (`wire_data`: one copy instead of four passes over the bytes)."""

    __slots__ = ()


def wire_data(body: bytes) -> bytes:
    """The DATA payload of `body` (RFC 5321 4.5.2): CRLF line endings, a dot doubled at the start of a line, the
    final `.` CRLF. Bytes operations only: the bodies the hub stores are already CRLF throughout (intake normalises
    them), so the common case is one `replace`; any other body has its line endings normalised first."""
    if type(body) is WireBody:
        return body + b".\r\n"
    crlf = body.count(b"\r\n")
    if body.count(b"\n") != crlf or body.count(b"\r") != crlf:
        body = _LINE_ENDS.sub(b"\r\n", body)
    if not body.endswith(b"\r\n"):
        body += b"\r\n"
    stuffed = body.replace(b"\r\n.", b"\r\n..")
    return (b"." if stuffed[:1] == b"." else b"") + stuffed + b".\r\n"


class SMTPClient:
    """The client end of one SMTP connection over asyncio streams: replies read with a timeout, commands written
    raw (several at once when pipelining), STARTTLS. Every read is bounded (line length, lines per reply)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.extensions: set[str] = set()

    @classmethod
    async def connect(cls, host: str, port: int, *, timeout: float, connect_timeout: float) -> "SMTPClient":
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=_READ_LIMIT),
                                                connect_timeout)
        return cls(reader, writer, timeout)

    @property
    def is_connected(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    async def reply(self) -> tuple[int, str]:
        lines: list[str] = []
        async with asyncio.timeout(self.timeout):
            while True:
                try:
                    line = await self.reader.readline()
                except ValueError:                       # over the stream's limit
                    raise ReplyError("reply line too long") from None
                if not line.endswith(b"\n"):
                    raise ReplyError("connection closed" if not line else "reply line too long")
                code = line[:3]
                if not code.isdigit() or line[3:4] not in (b" ", b"-", b"\r", b"\n"):
                    raise ReplyError(f"malformed reply {line[:40]!r}")
                lines.append(line[4:].strip().decode("utf-8", "replace"))   # Outcome makes it storable (NUL replaced)
                if line[3:4] != b"-":
                    return int(code), "\n".join(lines)
                if len(lines) >= _MAX_REPLY_LINES:
                    raise ReplyError("reply too long")

    def send(self, *commands: str) -> None:
        """Write command lines (one write); a command never carries a line break of its own."""
        data = "".join(commands)
        if "\r" in data or "\n" in data:
            raise ValueError("line break in an SMTP command")
        self.writer.write("\r\n".join(commands).encode("ascii") + b"\r\n")

    async def command(self, command: str) -> tuple[int, str]:
        self.send(command)
        return await self.reply()

    async def ehlo(self, name: str) -> tuple[int, str]:
        code, text = await self.command(f"EHLO {name}")
        self.extensions = set()
        if code == 250:
            self.extensions = {line.split(" ", 1)[0].upper() for line in text.split("\n")[1:] if line}
        elif 500 <= code < 600:
            code, text = await self.command(f"HELO {name}")
        return code, text

    async def starttls(self, context: ssl.SSLContext, server_hostname: str) -> None:
        code, text = await self.command("STARTTLS")
        if code != 220:
            raise ReplyError(f"STARTTLS answered {code} {text}")
        async with asyncio.timeout(self.timeout):
            await self.writer.start_tls(context, server_hostname=server_hostname)

    def ssl_object(self) -> ssl.SSLObject | None:
        return self.writer.get_extra_info("ssl_object")

    async def quit(self) -> None:
        try:
            await self.command("QUIT")
        finally:
            self.close()

    def close(self) -> None:
        self.writer.close()


@dataclass
class Outcome:
    kind: str                 # delivered | temporary | permanent
    reply: str

    def __post_init__(self) -> None:
        # a peer's reply is untrusted text: NUL or bytes that are not UTF-8 would fail every write of the outcome
        self.reply = storable(self.reply)

    @classmethod
    def from_code(cls, code: int, message: str) -> "Outcome":
        text = f"{code} {' '.join(message.split())}"
        if 200 <= code < 300:
            return cls("delivered", text)
        if 500 <= code < 600:
            return cls("permanent", text)
        return cls("temporary", text)


@dataclass
class Connection:
    hop: NextHop
    smtp: SMTPClient
    tls_version: str | None
    peer_subject: str | None
    dsn: bool
    pipelining: bool = False
    last_used: float = field(default_factory=time.monotonic)
    uses: int = 0
    peer_der: bytes | None = None
    revocation: object = None            # the peer certificate's hub.revocation Decision, once checked


class ClientPool:
    max_idle = 30.0
    max_uses = 1000

    def __init__(self, settings, revocation=None):
        self.settings = settings
        self.revocation = revocation          # hub.revocation.RevocationChecker: peers' certificates vs CRLs
        self._idle: dict[str, list[Connection]] = {}
        self._ctx: dict[str, ssl.SSLContext] = {}

    def _tls(self, mode: str) -> ssl.SSLContext:
        if mode not in self._ctx:
            self._ctx[mode] = client_tls_context(self.settings, verify=(mode == "verify"))
        return self._ctx[mode]

    async def acquire(self, hop: NextHop) -> Connection:
        idle = self._idle.get(hop.key, [])
        while idle:
            # a released connection is between transactions (transact() always ends with a final reply or RSET,
            # and a connection in doubt is never released as reusable): no RSET round trip needed
            conn = idle.pop()
            if time.monotonic() - conn.last_used < self.max_idle and conn.smtp.is_connected:
                return conn
            await self._close(conn)
        return await self._connect(hop)

    def release(self, conn: Connection, reusable: bool) -> None:
        conn.uses += 1
        conn.last_used = time.monotonic()
        if reusable and conn.uses < self.max_uses and conn.smtp.is_connected:
            self._idle.setdefault(conn.hop.key, []).append(conn)
        else:
            asyncio.ensure_future(self._close(conn))

    async def _connect(self, hop: NextHop) -> Connection:
        d = self.settings.delivery
        smtp = None
        try:
            smtp = await SMTPClient.connect(hop.host, hop.port, timeout=d.command_timeout,
                                            connect_timeout=d.connect_timeout)
            code, text = await smtp.reply()
            if code != 220:
                raise TemporaryError(f"4.4.2 {hop.key} answered {code} {' '.join(text.split())}")
            name = self.settings.smtp.hostname
            await self._hello(smtp, hop, name)
            tls_version = subject = der = None
            if hop.tls != "none":
                if "STARTTLS" not in smtp.extensions:
                    raise TemporaryError(f"4.7.4 {hop.key} does not offer STARTTLS, which is mandatory")
                await smtp.starttls(self._tls(hop.tls), server_hostname=hop.host)
                sslobj = smtp.ssl_object()
                if sslobj is not None:
                    tls_version = sslobj.version()
                    der = sslobj.getpeercert(binary_form=True)
                    if der:
                        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
                await self._hello(smtp, hop, name)
            return Connection(hop, smtp, tls_version, subject, "DSN" in smtp.extensions,
                              "PIPELINING" in smtp.extensions, peer_der=der)
        except TemporaryError:
            self._quit(smtp)
            raise
        except ssl.SSLCertVerificationError as exc:
            self._quit(smtp)
            raise TemporaryError(f"4.7.5 TLS certificate of {hop.key} not verified: {exc.verify_message}") from None
        except _NETWORK_ERRORS as exc:
            self._quit(smtp)
            raise TemporaryError(f"4.4.1 cannot connect to {hop.key}: {type(exc).__name__}: {exc}") from None

    async def revocation_refusal(self, conn: Connection) -> str | None:
        """Why a verified peer's certificate must not be used (revoked, or its status unknown under the `defer`
        policy: hub.revocation), as the reply to defer with; None when it may. Checked once per connection."""
        if self.revocation is None or conn.hop.tls != "verify":
            return None
        if conn.revocation is None:
            conn.revocation = await self.revocation.check(conn.peer_der or b"")
        if conn.revocation.action == "accept":
            return None
        return f"4.7.5 certificate of {conn.hop.key} ({conn.peer_subject}): {conn.revocation.verdict.reason}"

    @staticmethod
    async def _hello(smtp: SMTPClient, hop: NextHop, name: str) -> None:
        code, text = await smtp.ehlo(name)
        if code != 250:
            raise TemporaryError(f"4.4.2 {hop.key} answered {code} {' '.join(text.split())}")

    @staticmethod
    def _quit(smtp: SMTPClient | None) -> None:
        if smtp is not None:
            smtp.close()

    async def _close(self, conn: Connection) -> None:
        try:
            await asyncio.wait_for(conn.smtp.quit(), 5)
        except (*_NETWORK_ERRORS, RuntimeError):
            self._quit(conn.smtp)

    async def close_all(self) -> None:
        for conns in self._idle.values():
            for c in conns:
                await self._close(c)
        self._idle.clear()


def _xtext(value: str) -> str:
    return "".join(c if 33 <= ord(c) <= 126 and c not in "+=" else f"+{ord(c):02X}" for c in value)


async def transact(conn: Connection, mail_from: str, rcpts: list[tuple[int, str, str | None, str | None]],
                   body: bytes, *, ret: str | None, envid: str | None) -> tuple[dict[int, Outcome], bool]:
    """One SMTP transaction. rcpts: (row id, address, notify, orcpt). Returns per-row outcomes and whether the
    connection may be reused. With a peer that offers PIPELINING (RFC 2920), MAIL, the RCPTs and DATA go in one
    write and their replies are read in order: two round trips for a message instead of three plus one per
    recipient."""
    smtp = conn.smtp
    outcomes: dict[int, Outcome] = {}
    mail = f"MAIL FROM:<{mail_from}>"
    if conn.dsn:
        if ret:
            mail += f" RET={ret}"
        if envid:
            mail += f" ENVID={_xtext(envid)}"
    rcpt_lines = []
    for _, address, notify, orcpt in rcpts:
        line = f"RCPT TO:<{address}>"
        if conn.dsn and notify:
            line += f" NOTIFY={notify}"
        if conn.dsn and orcpt:
            line += f" ORCPT={_xtext(orcpt)}"
        rcpt_lines.append(line)
    try:
        if conn.pipelining:
            smtp.send(mail, *rcpt_lines, "DATA")
        else:
            smtp.send(mail)
        code, text = await smtp.reply()
        if code != 250:
            o = Outcome.from_code(code, text)
            if conn.pipelining:                   # the RCPT and DATA replies still come: refusals
                for _ in range(len(rcpt_lines) + 1):
                    await smtp.reply()
            await smtp.command("RSET")
            return {rid: o for rid, *_ in rcpts}, True
        accepted = []
        for (rid, *_), line in zip(rcpts, rcpt_lines):
            if not conn.pipelining:
                smtp.send(line)
            code, text = await smtp.reply()
            if 200 <= code < 300:
                accepted.append(rid)
            else:
                outcomes[rid] = Outcome.from_code(code, text)
        if not accepted and not conn.pipelining:
            await smtp.command("RSET")
            return outcomes, True
        if not conn.pipelining:
            smtp.send("DATA")
        code, text = await smtp.reply()
        if code == 354:
            # with pipelining, a peer should refuse DATA when it refused every RCPT; one that accepts it gets an
            # empty message it can deliver to nobody
            smtp.writer.write(wire_data(body) if accepted else b".\r\n")
            code, text = await smtp.reply()
        elif not accepted:
            await smtp.command("RSET")
            return outcomes, True
        elif code < 400 or code >= 600:
            raise ReplyError(f"DATA answered {code}")
        o = Outcome.from_code(code, text)
        if code >= 400 and accepted:
            await smtp.command("RSET")
        for rid in accepted:
            outcomes[rid] = o
        return outcomes, True
    except _NETWORK_ERRORS as exc:
        o = Outcome("temporary", f"4.4.2 connection to {conn.hop.key} lost: {type(exc).__name__}: {exc}")
        for rid, *_ in rcpts:
            outcomes.setdefault(rid, o)
        # a reply lost after DATA was sent: outcome unknown, treat as temporary (at-least-once)
        return outcomes, False
