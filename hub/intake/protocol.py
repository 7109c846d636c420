"""The SMTP protocol engine: aiosmtpd's `SMTP` with these changes, none of them policy.

* DATA is read in large chunks up to the CRLF.CRLF terminator instead of line by line (aiosmtpd's line loop is
  most of a relay's CPU at 100 KB). Only CRLF.CRLF ends the data (no SMTP smuggling with bare LF or CR); bare LF
  line ends are normalised to CRLF so no other MTA downstream can read a different message boundary. Dot-stuffing
  is undone; the size limit is enforced while reading, and the rest is drained before 552 is answered. What the
  handler leaves in `envelope.hub_after_reply` (the work that follows a commit) runs once the DATA reply is written.
* MAIL and RCPT accept the null sender and the DSN parameters (RFC 3461: RET, ENVID, NOTIFY, ORCPT) besides SIZE
  and BODY, and hand them to the handler parsed; MAIL takes AUTH= (RFC 4954 5) and drops it. `RCPT TO:<Postmaster>`
  (no domain) is handed over as `postmaster`. A quoted local part hiding a dot-atom is unquoted (`"a.b"@x` is
  `a.b@x`); one that needs its quotes is refused. Command lines may be as long as the offered extensions make
  them (`_CommandLimits`), the same in every session.
* AUTH PLAIN/LOGIN call an async authenticator on the handler (the slow password hash runs off the loop); `=` is
  an empty initial response; a mechanism name in any case is taken; AUTH during a mail transaction is 503.
* HELP answers 214, VRFY 252 without parsing; no reply quotes a control character back. NOOP, VRFY and HELP are
  limited between two accepted messages (`junk_limit`), not per session.
* Any 421 reply closes the connection.
* Envelope text is checked before anything stores or looks it up (`address_problem`, `text_problem`): bytes that
  are not UTF-8 (aiosmtpd hands them over as lone surrogates), NUL and other control characters, non-ASCII
  addresses (SMTPUTF8 is not offered: MSSanté addresses are ASCII) and malformed domains get a 5xx reply, in
  MAIL, RCPT, their ENVID / ORCPT parameters and EHLO / HELO.
Policy lives in hub.intake.handler.
"""

from __future__ import annotations

import asyncio
import binascii
import functools
import re
import socket
import textwrap
import unicodedata
from base64 import b64decode, b64encode
from typing import Any

from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, BOGUS_LIMIT, MISSING, SMTP, AuthResult, LoginPassword, Session
from aiosmtpd.smtp import TLSSetupException
from aiosmtpd.smtp import log as _aiosmtpd_log

from hub.intake import replies

_TERMINATOR = b"\r\n.\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")
_ADDR = re.compile(r"^\s*<([^<>]*)>\s*(.*)$")
# `MAIL FROM:dpi@ch.example SIZE=100`: no angle brackets, as older sending software writes it; Postfix takes it
# (strict_rfc821_envelopes = no, its default): the address is the first word, the parameters follow
_BARE_ADDR = re.compile(r"^\s*([^<>\s]+)(?:\s+(.*))?$")
_XTEXT = re.compile(r"\+([0-9A-F]{2})")
_SURROGATE = re.compile("[\ud800-\udfff]")          # undecodable bytes, as aiosmtpd's surrogateescape leaves them
_CONTROL = re.compile("[\x00-\x1f\x7f]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"(?:{_LABEL}\.)*{_LABEL}|\[[0-9A-Fa-f:.]+\]|\[IPv6:[0-9A-Fa-f:.]+\]")
_ROUTE = re.compile(r"@[^@:,<>\s]+(?:,@[^@:,<>\s]+)*:")          # `@a,@b:` before the mailbox
_ORCPT = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*;\S+")               # RFC 3461: addr-type ";" xtext, both present
_XTEXT_VALUE = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})+")    # RFC 3461 4: xtext
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"@([^@]*)')                 # RFC 5321 4.1.2: Quoted-string "@" Domain
_DOT_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_REPLY_CONTROL = re.compile(rb"[\x00-\x1f\x7f]")
_ENHANCED_CODE = re.compile(rb"[245]\.\d{1,3}\.\d{1,3}")
_REPLY_MAX = 510                                   # octets of a reply line before its CRLF (RFC 5321 4.5.3.1.5)
# the enhanced status code of a reply that has none (aiosmtpd's own), by reply code; else its class's X.0.0
_ENHANCED = {b"500": b"5.5.2", b"501": b"5.5.4", b"502": b"5.5.1", b"503": b"5.5.1", b"504": b"5.5.4",
             b"530": b"5.7.0", b"552": b"5.3.4", b"554": b"5.7.0", b"555": b"5.5.4", b"454": b"4.7.0"}


def _ascii(text: str) -> bytes:
    """A reply in ASCII: accents dropped (`MSSanté` -> `MSSante`), anything else as `?`."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).encode(
        "ascii", "replace")


def _wrapped(status: bytes) -> bytes:
    """A reply longer than a reply line may be (RFC 5321 4.5.3.1.5: 512 octets with the CRLF) as a multi-line
    reply, each line with the code and the enhanced status code (RFC 2034), cut between words where it can."""
    code, _, text = status.partition(b" ")
    enhanced, _, rest = text.partition(b" ")
    if _ENHANCED_CODE.fullmatch(enhanced):
        text, enhanced = rest, enhanced + b" "
    else:
        enhanced = b""
    lines = textwrap.wrap(text.decode("ascii"), _REPLY_MAX - 4 - len(enhanced), break_on_hyphens=False) or [""]
    last = len(lines) - 1
    return b"\r\n".join(code + (b"-" if n < last else b" ") + enhanced + line.encode("ascii")
                         for n, line in enumerate(lines))


def text_problem(text: str) -> str | None:
    """Why envelope text cannot be taken (it could not be stored or would mean something else downstream)."""
    if _SURROGATE.search(text):
        return "not utf-8"
    if _CONTROL.search(text):
        return "control"
    return None


def data_content(raw: bytes) -> tuple[bytes, bool]:
    """The message from the bytes read after DATA, without the final `.` CRLF: bare LF made CRLF, the dot-stuffing
    undone (RFC 5321 4.5.2); and whether it is also its own wire form (CRLF throughout and at the end, no bare CR,
    no line starting with a dot: hub.delivery.client.WireBody), as most messages are. The counts are the cheap
    tests (one pass each at C speed); the regex and the un-stuffing run only when needed. CRs and LFs are
    counted together (deleted in one pass: a third of the time of the two counts) and are twice the CRLF pairs
    exactly when there is neither a bare CR nor a bare LF; whether any line starts with a dot is searched from
    the end (the reverse search is twice as fast here as the forward one, and any match will do)."""
    crlf = raw.count(b"\r\n")
    canonical = len(raw) - len(raw.translate(None, b"\r\n")) == 2 * crlf
    if not canonical and raw.count(b"\n") != crlf:
        raw = _BARE_LF.sub(b"\r\n", raw)
    if raw.startswith(b"."):
        raw = raw[1:]
    if raw.startswith(b".") or raw.rfind(b"\r\n.") >= 0:
        return raw.replace(b"\r\n.", b"\r\n"), False
    return raw, canonical and raw.endswith(b"\r\n")


def address_problem(address: str, *, sender: bool) -> str | None:
    """The refusal for an envelope address (MAIL FROM when `sender`, else RCPT TO), or None when it is usable."""
    enhanced = "5.1.7" if sender else "5.1.3"
    problem = text_problem(address)
    if problem == "not utf-8":
        return replies.ADDRESS_NOT_UTF8.format(enhanced=enhanced)
    if problem == "control":
        return replies.ADDRESS_CONTROL.format(enhanced=enhanced)
    if not address.isascii():
        return replies.ADDRESS_NOT_ASCII
    if address.startswith('"'):
        return replies.QUOTED_LOCAL_PART.format(enhanced=enhanced)
    local, at, domain = address.rpartition("@")
    if not at or not local or " " in address or '"' in address or len(address) > 320 \
            or not _DOMAIN.fullmatch(domain):
        return replies.MALFORMED_SENDER if sender else replies.MALFORMED_ADDRESS
    return None


def unquoted(address: str) -> str:
    """`"dr.martin"@x` is `dr.martin@x` (RFC 5321 4.1.2: the quotes, and quoted pairs, hide a dot-atom): one form
    for the directory, the rules and the next hop. A local part that needs its quotes stays quoted (refused)."""
    m = _QUOTED.fullmatch(address)
    if m is None:
        return address
    local = re.sub(r"\\(.)", r"\1", m.group(1))
    return f"{local}@{m.group(2)}" if _DOT_ATOM.fullmatch(local) else address


def xtext_decode(value: str) -> str:
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value)


def parse_params(text: str) -> dict[str, str | bool] | None:
    params: dict[str, str | bool] = {}
    for item in text.split():
        key, eq, value = item.partition("=")
        if not key or key.upper() in params:
            return None
        params[key.upper()] = value if eq else True
    return params


class HubSession(Session):
    """aiosmtpd's Session without the deprecated `login_data` property, whose every use (at each successful AUTH)
    prints a plain-text warning on the service's output."""

    login_data = None


class _CommandLimits(dict):
    """The longest command line taken, by verb (octets before the CRLF; a longer one gets `500 5.5.2`): RFC 5321's
    512 (4.5.3.1.4), MAIL and RCPT lengthened by the parameters the EHLO reply offers (RFC 1870 SIZE: 26, BODY=: 14,
    RFC 3461 DSN: 100 on MAIL and 500 on RCPT, RFC 4954 AUTH=: 500). The same for every session: aiosmtpd's limits
    are one dict shared by every connection, emptied by each new one and raised at each EHLO (its `+= 26` is a no-op
    here), so whether a MAIL line was too long depended on the other sessions."""

    def __missing__(self, verb: str) -> int:
        return 512

    def __setitem__(self, verb: str, value: int) -> None:
        pass

    def clear(self) -> None:
        pass


class HubSMTP(SMTP):
    read_chunk_limit = 256 * 1024
    command_size_limits = _CommandLimits(MAIL=512 + 26 + 14 + 100 + 500, RCPT=512 + 500)
    line_length_limit = 2048                       # what the reader takes before "too long" (commands, AUTH lines)
    # AUTH LOGIN's challenges as every server sends them ([MS-XLOGIN]: clients may check them); aiosmtpd's own are
    # "User Name\0" and "Password\0"
    AuthLoginUsernameChallenge = "Username:"
    AuthLoginPasswordChallenge = "Password:"

    @classmethod
    def factory(cls, handler, **kwargs):
        """A protocol factory for `loop.create_server`. aiosmtpd's constructor introspects the class and the handler
        on every connection (inspect.getmembers, dir, inspect.signature: a tenth of the hub's CPU for a session of
        one message); here only the first protocol is built that way, and each next one gets the same settings
        and the same command, hook and AUTH methods, looked up by name on itself."""
        template: _Template | None = None

        def make() -> HubSMTP:
            nonlocal template
            if template is None:
                proto = cls(handler, **kwargs)
                template = _Template(proto)
                return proto
            return template.new()

        return make

    def connection_made(self, transport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)      # pipelined replies go out at once
        super().connection_made(transport)
        sessions = getattr(self.event_handler, "sessions", None)
        if sessions is not None:
            sessions.add(self)
            limit = getattr(self.event_handler, "max_connections", 0)
            if limit and len(sessions) > limit:
                transport.write(b"421 4.7.0 Too many connections, try again later\r\n")
                transport.close()

    _hub_uploading = False
    _hub_deadline = 0.0

    def _reset_timeout(self, duration: float | None = None) -> None:
        """The session timeout restarts at each command (and at each chunk of an upload); aiosmtpd cancelled its
        timer and scheduled a new one each time. Here one timer per session is moved only when it fires early:
        it then waits for the rest of the time since the client was last heard. A shorter timeout than the one
        pending takes effect at once."""
        loop = self.loop
        deadline = loop.time() + (duration or self._timeout_duration)
        self._hub_deadline = deadline
        handle = self._timeout_handle
        if handle is not None and not handle.cancelled():
            if handle.when() <= deadline:
                return
            handle.cancel()
        self._timeout_handle = loop.call_at(deadline, self._hub_timer)

    def _hub_timer(self) -> None:
        if self.loop.time() < self._hub_deadline:
            self._timeout_handle = self.loop.call_at(self._hub_deadline, self._hub_timer)
            return
        if self.transport is not None:
            self._timeout_cb()

    def data_received(self, data: bytes) -> None:
        """While DATA is read, smtp.session_timeout counts the client's silence, not the length of the upload (a
        large letter over a slow link arrives whole); aiosmtpd restarts it at each command only."""
        if self._hub_uploading:
            self._reset_timeout()
        wr = self._stream_reader_wr              # StreamReaderProtocol.data_received, without its two calls
        reader = wr() if wr is not None else None
        if reader is not None:
            reader.feed_data(data)

    def _hub_refused_before(self, verb: str) -> bool:
        """Whether aiosmtpd's checks before MAIL, RCPT or DATA (HELO/EHLO first, AUTH when required) would refuse:
        they are then run (and answer); the usual case costs no coroutine."""
        session = self.session
        return not session.host_name or (self._auth_required and not session.authenticated)

    def _timeout_cb(self) -> None:
        """smtp.session_timeout of silence: the 421 a server closing the connection answers (RFC 5321 3.8, as
        Postfix does), then the close; aiosmtpd closed without a word."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(replies.TIMEOUT.encode("ascii") + b"\r\n")
        super()._timeout_cb()

    def _create_session(self):
        return HubSession(self.loop)

    async def _handle_client(self) -> None:
        """aiosmtpd's command loop with the same checks, in the same order, and the same replies, less its work per
        command that the hub does not use: two log calls per command line at levels the hub never enables
        (their arguments were built each time), a defaultdict for the call limits per session, and a QUIT that
        cancels its own task (an exception raised through the loop at every session's end); the loop ends after
        QUIT instead. The PROXY protocol (never configured by the hub) is left to aiosmtpd's loop."""
        if self._proxy_timeout is not None:
            await super()._handle_client()
            return
        await self.push(f"220 {self.hostname} {self.__ident__}")
        limits = dict(self._call_limit_base) if self._enforce_call_limit else None
        default_limit = self._call_limit_default if limits is not None else 0
        bogus_budget = BOGUS_LIMIT
        reader = self._reader
        while self.transport is not None and not self._hub_quit:
            try:
                try:
                    line: bytes = await reader.readuntil()
                except asyncio.LimitOverrunError as error:
                    # line too long: read up to its end before answering, then read the next command line
                    await reader.read(error.consumed)
                    while True:
                        try:
                            await reader.readuntil()
                            break
                        except asyncio.LimitOverrunError as more:
                            await reader.read(more.consumed)
                    await self.push("500 Command line too long")
                    continue
                line = line.rstrip(b"\r\n")
                if not line:
                    await self.push("500 Error: bad syntax")
                    continue
                command_bytes, _, arg_bytes = line.partition(b" ")
                try:
                    command = command_bytes.upper().decode("ascii")
                except UnicodeDecodeError:
                    await self.push("500 Error: bad syntax")
                    continue
                if not arg_bytes:
                    arg: str | None = None
                else:
                    arg_bytes = arg_bytes.strip()
                    if self.enable_SMTPUTF8:       # the bytes kept as they came (checked by text_problem)
                        arg = str(arg_bytes, encoding="utf-8", errors="surrogateescape")
                    else:
                        try:
                            arg = str(arg_bytes, encoding="ascii", errors="strict")
                        except UnicodeDecodeError:
                            await self.push("500 Error: strict ASCII mode")
                            continue
                max_size = self.command_size_limits[command] if self.session.extended_smtp \
                    else self.command_size_limit
                if len(line) > max_size:
                    await self.push("500 Command line too long")
                    continue
                if not self._tls_handshake_okay and command != "QUIT":
                    await self.push("554 Command refused due to lack of security")
                    continue
                if self.require_starttls and not self._tls_protocol and command not in ALLOWED_BEFORE_STARTTLS:
                    await self.push("530 Must issue a STARTTLS command first")
                    continue
                if limits is not None:
                    budget = limits.get(command, default_limit)
                    if budget < 1:
                        _aiosmtpd_log.warning("%r over limit for %s", self.session.peer, command)
                        await self.push(f"421 4.7.0 {command} sent too many times")
                        self.transport.close()
                        continue
                    limits[command] = budget - 1
                method = self._smtp_methods.get(command)
                if method is None:
                    bogus_budget -= 1
                    if bogus_budget < 1:         # aiosmtpd answers 502; closing the connection is a 421
                        await self.push(replies.TOO_MANY_UNKNOWN)     # (RFC 5321 3.8), which push closes on
                        continue
                    await self.push(f'500 Error: command "{command}" not recognized')
                    continue
                self._reset_timeout()           # a valid command: the client's silence counts from here
                await method(arg)
            except (asyncio.CancelledError, ConnectionResetError):
                self._writer.close()
                raise
            except Exception as error:
                status = None
                try:
                    status = await self.handle_exception(error)
                except Exception as inner:
                    try:
                        _aiosmtpd_log.exception("%r Exception in handle_exception()", self.session.peer)
                        status = f"500 Error: ({inner.__class__.__name__}) {inner}"
                    except Exception:
                        status = "500 Error: Cannot describe error"
                finally:
                    if isinstance(error, TLSSetupException):
                        self.transport.close()
                        self.connection_lost(error)
                    else:
                        await self.push(status)

    _hub_quit = False

    @functools.wraps(SMTP.smtp_QUIT)                 # keeps aiosmtpd's HELP syntax text
    async def smtp_QUIT(self, arg: str) -> None:
        """aiosmtpd's QUIT, which ends the command loop by returning rather than by cancelling its task."""
        if arg:
            await self.push("501 Syntax: QUIT")
            return
        status = await self._call_handler_hook("QUIT")
        await self.push("221 Bye" if status is MISSING else status)
        self._hub_quit = True
        if self.transport is not None:
            self.transport.close()

    def _refused(self, event: str, reply: str, **facts) -> None:
        """Refusals decided here (size) are logged by the handler like its own."""
        hook = getattr(self.event_handler, "log_refusal", None)
        if hook is not None:
            hook(event, self.session, self.envelope, reply, **facts)

    def connection_lost(self, exc) -> None:
        sessions = getattr(self.event_handler, "sessions", None)
        if sessions is not None:
            sessions.discard(self)
        super().connection_lost(exc)

    async def push(self, status: str | bytes) -> None:
        """Send a reply. A 250 reply is held while the client's next command line is already buffered (it
        pipelined, RFC 2920) and goes out in one write with the following replies, as Postfix does: the replies to
        MAIL, RCPT and DATA cost one write instead of three. The lines of a multi-line reply (EHLO) are held until
        its last line: one write instead of one per line. Every other reply (354, 220 before TLS, errors)
        flushes, and nothing is held when the next read would wait for the client.
        Every reply is ASCII (SMTPUTF8 is not offered: `é` goes out as `e`, undecodable client bytes quoted back as
        `?`), and every 2xx/4xx/5xx reply but the greeting and the HELO/EHLO reply carries an enhanced status code
        (ENHANCEDSTATUSCODES is offered, RFC 2034): aiosmtpd's own replies (`503 Error: send HELO first`,
        `500 Command line too long`, `221 Bye`...) get their class's code. Control characters a reply would quote
        back from the client go out as `?`; a reply longer than a reply line goes out as a multi-line reply
        (`_wrapped`)."""
        status = self._hold(status)
        if status[3:4] == b"-":                      # a continuation line: its reply is not complete yet
            return
        held = self._hub_replies
        reader = self._reader
        if status[:3] == b"250" and reader is not None and b"\n" in reader._buffer:
            return
        writer = self._writer
        writer.write(b"".join(held))
        held.clear()
        # StreamWriter.drain() when it would do something (the client not reading, or the connection closing or
        # lost: it then raises); else it only checks this and returns, at the cost of two coroutines per reply
        if self._paused or self._connection_lost or writer.transport.is_closing():
            await writer.drain()
        if status[:3] == b"421" and self.transport is not None:
            self.transport.close()

    def _hold(self, status: str | bytes) -> bytes:
        """A reply line made ASCII, with its enhanced status code where it needs one, added to the held replies."""
        if isinstance(status, str):
            status = status.encode("ascii") if status.isascii() else _ascii(status)
        if _REPLY_CONTROL.search(status):              # client text quoted back (an unknown verb): no CR, no NUL
            status = _REPLY_CONTROL.sub(b"?", status)
        first = "_hub_replies" not in self.__dict__
        if status[:1] in b"245" and not (status[5:6] == b"." and status[4:5] in b"245") and not first \
                and not self.__dict__.get("_hub_hello"):
            status = b" ".join((status[:3], _ENHANCED.get(status[:3], status[:1] + b".0.0"), status[4:].lstrip()))
        self.__dict__.setdefault("_hub_replies", []).append(
            (status if len(status) <= _REPLY_MAX or status[3:4] != b" " else _wrapped(status)) + b"\r\n")
        return status

    # ---- HELO / EHLO -------------------------------------------------------------------------------------------
    @functools.wraps(SMTP.smtp_HELO)                 # keeps aiosmtpd's HELP syntax text
    async def smtp_HELO(self, hostname: str) -> None:
        if hostname and text_problem(hostname):
            await self.push(replies.BAD_HELO.format(verb="HELO"))
            return
        await self._hello(super().smtp_HELO(hostname), hostname)

    @functools.wraps(SMTP.smtp_EHLO)
    async def smtp_EHLO(self, hostname: str) -> None:
        """aiosmtpd's EHLO (the same lines, the same state changes, the handler's hook), with its reply held as
        one block and written once: aiosmtpd pushed each line through its own coroutine."""
        if hostname and text_problem(hostname):
            await self.push(replies.BAD_HELO.format(verb="EHLO"))
            return
        if not hostname or self._ehlo_hook_ver == "old":
            await self._hello(super().smtp_EHLO(hostname), hostname)
            return
        response = ["250-" + self.hostname]
        self._set_rset_state()
        self.session.extended_smtp = True
        if self.data_size_limit:
            response.append(f"250-SIZE {self.data_size_limit}")
        if not self._decode_data:
            response.append("250-8BITMIME")
        if self.enable_SMTPUTF8:
            response.append("250-SMTPUTF8")
        if self.tls_context and not self._tls_protocol:
            response.append("250-STARTTLS")
        if not self._auth_require_tls or self._tls_protocol:
            response.append("250-AUTH " + " ".join(sorted(self._auth_methods)))
        if self._ehlo_hook_ver is None:
            self.session.host_name = hostname
            response.append("250 HELP")
        else:
            response.append("250 HELP")
            response = await self._call_handler_hook("EHLO", hostname, response)
        self._hub_hello = True             # no enhanced status codes in the EHLO reply (RFC 2034)
        try:
            for line in response[:-1]:
                self._hold(line)
            await self.push(response[-1])
        finally:
            self._hub_hello = False

    async def _hello(self, command, hostname: str) -> None:
        """The HELO/EHLO reply goes out without enhanced codes (RFC 2034); its syntax error gets one."""
        self._hub_hello = bool(hostname)
        try:
            await command
        finally:
            self._hub_hello = False

    @functools.wraps(SMTP.smtp_STARTTLS)
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None and not arg:         # aiosmtpd would answer 220 and nest a second TLS
            await self.push("503 5.5.1 TLS already active")
            return
        if not arg and getattr(self.envelope, "hub_mail_started", False):   # as Postfix: the envelope given in
            await self.push("503 5.5.1 Error: MAIL transaction in progress")  # clear is not carried into TLS
            return
        await super().smtp_STARTTLS(arg)

    # ---- commands that move no mail -----------------------------------------------------------------------------
    junk_limit = 100               # NOOP, VRFY, HELP between two accepted messages (as Postfix's junk limit)
    _hub_junk = 0

    async def _junk(self) -> bool:
        """Whether this command is one too many (then answered 421 and closed). The count starts again at each
        accepted message: a client keeping its session alive with a NOOP between messages is never cut (a
        limit per session cut it after its 100th NOOP, however much mail it sent)."""
        self._hub_junk += 1
        if self._hub_junk <= self.junk_limit:
            return False
        await self.push(replies.TOO_MANY_JUNK)
        return True

    @functools.wraps(SMTP.smtp_NOOP)
    async def smtp_NOOP(self, arg: str) -> None:
        if not await self._junk():
            await super().smtp_NOOP(arg)

    @functools.wraps(SMTP.smtp_HELP)
    async def smtp_HELP(self, arg: str) -> None:
        """214 (RFC 5321 4.1.1.8; aiosmtpd answers 250), 504 for a topic it has no help on."""
        if await self._junk():
            return
        help_for = self._smtp_methods.get(arg.upper()) if arg else None
        if help_for is not None and self._syntax_available(help_for):
            syntax = help_for.__smtp_syntax__ + ((help_for.__smtp_syntax_extended__ or "")
                                                  if self.session.extended_smtp else "")
            await self.push("214 2.0.0 Syntax: " + syntax)
            return
        commands = " ".join(sorted(n for n, m in self._smtp_methods.items() if self._syntax_available(m)))
        await self.push(("504 5.5.4 No help on that; commands: " if arg else "214 2.0.0 Commands: ") + commands)

    @functools.wraps(SMTP.smtp_VRFY)
    async def smtp_VRFY(self, arg: str) -> None:
        """252 for any argument (RFC 5321 3.5.3: nothing is verified); aiosmtpd answered an address it could not
        parse `502` (not implemented) with the argument quoted back."""
        if await self._junk():
            return
        await self.push(replies.VRFY if arg else "501 5.5.4 Syntax: VRFY <address>")

    @functools.wraps(SMTP.smtp_AUTH)
    async def smtp_AUTH(self, arg: str) -> None:
        if getattr(self.envelope, "hub_mail_started", False):      # RFC 4954 4: not during a mail transaction
            await self.push("503 5.5.1 AUTH is not permitted during a mail transaction")
            return
        if arg:                                    # RFC 4954 7: `AUTH plain` is `AUTH PLAIN` (aiosmtpd: 504)
            mechanism, space, response = arg.partition(" ")
            arg = mechanism.upper() + space + response
        await super().smtp_AUTH(arg)

    # ---- MAIL / RCPT -------------------------------------------------------------------------------------------
    def _split_path(self, arg: str | None, keyword: str) -> tuple[str, str] | None:
        if arg is None:
            return None
        arg = self._strip_command_keyword(keyword, arg)
        if arg is None:
            return None
        m = _ADDR.match(arg) or _BARE_ADDR.match(arg)
        if not m:
            return None
        address = m.group(1).strip()
        route = _ROUTE.match(address)             # RFC 5321 4.1.1.3: a source route is ignored, never relayed
        return unquoted(address[route.end():] if route else address), m.group(2) or ""

    @functools.wraps(SMTP.smtp_MAIL)                 # keeps aiosmtpd's HELP syntax text
    async def smtp_MAIL(self, arg: str | None) -> None:
        if self._hub_refused_before("MAIL") and (await self.check_helo_needed()
                                                   or await self.check_auth_needed("MAIL")):
            return
        split = self._split_path(arg, "FROM:")
        if split is None:
            await self.push(replies.BAD_SYNTAX_MAIL)
            return
        address, rest = split
        refusal = address_problem(address, sender=True) if address else None
        if refusal:
            await self.push(refusal)
            return
        if getattr(self.envelope, "hub_mail_started", False):
            await self.push(replies.NESTED_MAIL)
            return
        params = parse_params(rest)
        if params is None:
            await self.push(replies.BAD_SYNTAX_MAIL)
            return
        if params and not self.session.extended_smtp:     # after HELO no parameter is offered (RFC 5321 4.1.1.11)
            await self.push(replies.BAD_PARAM.format(name=next(iter(params))))
            return
        body = params.pop("BODY", "7BIT")
        if not isinstance(body, str) or body.upper() not in ("7BIT", "8BITMIME"):     # any case (RFC 6152, ABNF)
            await self.push(replies.BAD_PARAM.format(name="BODY"))
            return
        size = params.pop("SIZE", None)
        if size is not None:
            if not isinstance(size, str) or not size.isdigit():
                await self.push(replies.BAD_PARAM_VALUE.format(name="SIZE"))
                return
            if self.data_size_limit and int(size) > self.data_size_limit:
                self._refused("message_refused", replies.TOO_BIG, size=int(size))
                await self.push(replies.TOO_BIG)
                return
        ret = params.pop("RET", None)
        if ret is not None and (not isinstance(ret, str) or ret.upper() not in ("FULL", "HDRS")):
            await self.push(replies.BAD_PARAM_VALUE.format(name="RET"))
            return
        auth = params.pop("AUTH", None)               # RFC 4954 5: taken (the server must), trusted for nothing
        if auth is not None and (not isinstance(auth, str) or len(auth) > 500 or not _XTEXT_VALUE.fullmatch(auth)
                                 or text_problem(xtext_decode(auth))):
            await self.push(replies.BAD_PARAM_VALUE.format(name="AUTH"))
            return
        envid = params.pop("ENVID", None)
        if envid is not None and (not isinstance(envid, str) or len(envid) > 100 or text_problem(envid)
                                  or text_problem(xtext_decode(envid))):
            await self.push(replies.BAD_PARAM_VALUE.format(name="ENVID"))
            return
        if params:
            await self.push(replies.BAD_PARAM.format(name=next(iter(params))))
            return
        dsn = {"ret": ret.upper() if isinstance(ret, str) else None,
               "envid": xtext_decode(envid) if isinstance(envid, str) else None}
        status = await self._call_handler_hook("MAIL", address, dsn)
        if status is MISSING or status.startswith("250"):
            self.envelope.mail_from = address
            self.envelope.hub_mail_started = True
            self.envelope.hub_dsn = dsn
        await self.push(replies.SENDER_OK if status is MISSING else status)

    @functools.wraps(SMTP.smtp_RCPT)                 # keeps aiosmtpd's HELP syntax text
    async def smtp_RCPT(self, arg: str | None) -> None:
        if self._hub_refused_before("RCPT") and (await self.check_helo_needed()
                                                   or await self.check_auth_needed("RCPT")):
            return
        if not getattr(self.envelope, "hub_mail_started", False):
            await self.push(replies.NEED_MAIL)
            return
        split = self._split_path(arg, "TO:")
        if split is None:
            await self.push(replies.BAD_SYNTAX_RCPT)
            return
        address, rest = split
        if address.lower() == "postmaster":             # RFC 5321 4.1.1.3: `<Postmaster>`, no domain, any case
            refusal = None                               # (the handler says which postmaster it is)
        else:
            refusal = address_problem(address, sender=False) if address else replies.MALFORMED_ADDRESS
        if refusal:
            await self.push(refusal)
            return
        params = parse_params(rest)
        if params is None:
            await self.push(replies.BAD_SYNTAX_RCPT)
            return
        if params and not self.session.extended_smtp:     # after HELO no parameter is offered (RFC 5321 4.1.1.11)
            await self.push(replies.BAD_PARAM.format(name=next(iter(params))))
            return
        notify = params.pop("NOTIFY", None)
        if notify is not None:
            values = {v.strip().upper() for v in str(notify).split(",")} if isinstance(notify, str) else set()
            if not values or not values <= {"NEVER", "SUCCESS", "FAILURE", "DELAY"} or \
                    ("NEVER" in values and len(values) > 1):
                await self.push(replies.BAD_PARAM_VALUE.format(name="NOTIFY"))
                return
            notify = ",".join(sorted(values))
        orcpt = params.pop("ORCPT", None)
        if orcpt is not None and (not isinstance(orcpt, str) or not _ORCPT.fullmatch(orcpt) or len(orcpt) > 500
                                  or text_problem(orcpt) or text_problem(xtext_decode(orcpt))):
            await self.push(replies.BAD_PARAM_VALUE.format(name="ORCPT"))
            return
        if params:
            await self.push(replies.BAD_PARAM.format(name=next(iter(params))))
            return
        options = {"notify": notify, "orcpt": xtext_decode(orcpt) if isinstance(orcpt, str) else None}
        status = await self._call_handler_hook("RCPT", address, options)
        if status is MISSING:
            self.envelope.rcpt_tos.append(address)
            status = replies.RCPT_OK
        await self.push(status)

    def _set_rset_state(self) -> None:
        super()._set_rset_state()
        if self.envelope is not None:
            self.envelope.hub_mail_started = False

    # ---- DATA --------------------------------------------------------------------------------------------------
    @functools.wraps(SMTP.smtp_DATA)                 # keeps aiosmtpd's HELP syntax text
    async def smtp_DATA(self, arg: str) -> None:
        if self._hub_refused_before("DATA") and (await self.check_helo_needed()
                                                   or await self.check_auth_needed("DATA")):
            return
        if not self.envelope.rcpt_tos:
            await self.push(replies.NEED_RCPT if getattr(self.envelope, "hub_mail_started", False)
                            else replies.NEED_MAIL)
            return
        if arg:
            await self.push("501 5.5.4 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        limit = self.data_size_limit or 0
        reader = self._reader
        saved_limit = reader._limit
        reader._limit = self.read_chunk_limit
        parts: list[bytes] = []
        size = 0
        too_big = False
        tail = b"\r\n"                        # the CRLF that ended the DATA command line
        self._hub_uploading = True
        try:
            while True:
                try:
                    chunk = await reader.readuntil(b".\r\n")
                    # the chunk ends with ".\r\n": the end of the data when a line ending comes before it (a
                    # short chunk is completed by the end of the one before); never a copy of a whole chunk
                    done = chunk.endswith(_TERMINATOR) if len(chunk) >= 5 else (tail + chunk).endswith(_TERMINATOR)
                except asyncio.LimitOverrunError as exc:
                    chunk = await reader.readexactly(exc.consumed)
                    done = False
                if not too_big:
                    parts.append(chunk)
                    size += len(chunk)
                    if limit and size > limit + 3:
                        too_big = True
                        parts.clear()
                if done:
                    break
                tail = chunk[-2:] if len(chunk) >= 2 else (tail + chunk)[-2:]
        except asyncio.IncompleteReadError:
            if self.transport is not None:
                self.transport.close()
            return
        finally:
            reader._limit = saved_limit
            self._hub_uploading = False
        if too_big:
            self._set_post_data_state()
            self._refused("message_refused", replies.TOO_BIG, size=size)
            await self.push(replies.TOO_BIG)
            return
        # strip the terminator: the final ".\r\n" (the CRLF before it belongs to the last line), from the last
        # chunk read (it ends with it) rather than from the joined message: one copy fewer of a message read whole
        parts[-1] = parts[-1][:-3]
        raw = b"".join(parts)
        parts.clear()
        content, canonical = data_content(raw)
        self.envelope.hub_canonical = canonical
        self.envelope.content = content
        self.envelope.original_content = content
        status = await self._call_handler_hook("DATA")
        # what the handler leaves for after its reply (IntakeHandler: the hand-over to delivery, the log line, the
        # metrics of a committed message): run once the reply is written, and whatever happens to the write
        after = self.envelope.__dict__.pop("hub_after_reply", None)
        self._set_post_data_state()
        if status is MISSING or status.startswith("250"):
            self._hub_junk = 0
        try:
            await self.push("250 OK" if status is MISSING else status)
        finally:
            if after is not None:
                after()

    # ---- AUTH --------------------------------------------------------------------------------------------------
    async def _hub_auth(self, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        return await self.event_handler.authenticate(self, self.session, mechanism, login, password)

    async def auth_PLAIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            value = await self.challenge_auth("")
            if value is MISSING:
                return AuthResult(success=False)
        else:
            value = await self._initial_response(args[1])
            if value is None:
                return AuthResult(success=False, handled=True)
        try:
            authzid, login, password = value.split(b"\x00")
        except ValueError:
            await self.push("501 5.5.2 Can't split auth value")
            return AuthResult(success=False, handled=True)
        if authzid and authzid != login:         # RFC 4616 2: acting as another identity is not authorised: fail
            return AuthResult(success=False, handled=False, message=replies.AUTH_OTHER_IDENTITY)
        return await self._hub_auth("PLAIN", login, password)

    async def _initial_response(self, arg: str) -> bytes | None:
        """The AUTH command's initial response, decoded: `=` is an empty one (RFC 4954 4). None once refused."""
        if arg == "=":
            return b""
        try:
            return b64decode(arg.encode(), validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Can't decode base64")
            return None

    async def challenge_auth(self, challenge: str | bytes, encode_to_b64: bool = True,
                             log_client_response: bool = False) -> Any:
        """aiosmtpd's, except for a response longer than a line: aiosmtpd answered it 451 and read the rest of it
        as commands, one reply out of step from then on. Here it is read to its end and answered 500 5.5.6."""
        challenge = challenge.encode() if isinstance(challenge, str) else challenge
        await self.push(b"334 " + (b64encode(challenge) if encode_to_b64 else challenge))
        try:
            line = await self._reader.readuntil()
        except asyncio.IncompleteReadError:
            return MISSING
        except asyncio.LimitOverrunError as exc:
            await self._reader.read(exc.consumed)
            while True:
                try:
                    await self._reader.readuntil()
                    break
                except asyncio.LimitOverrunError as more:
                    await self._reader.read(more.consumed)
            await self.push("500 5.5.6 Authentication line too long")
            return MISSING
        blob = line.strip()
        if blob == b"*":
            await self.push("501 5.7.0 Auth aborted")
            return MISSING
        try:
            return b64decode(blob, validate=True)
        except (binascii.Error, ValueError):
            await self.push("501 5.5.2 Can't decode base64")
            return MISSING

    async def auth_LOGIN(self, _: Any, args: list[str]) -> AuthResult:
        if len(args) == 1:
            login = await self.challenge_auth(self.AuthLoginUsernameChallenge)
            if login is MISSING:
                return AuthResult(success=False)
        else:
            login = await self._initial_response(args[1])
            if login is None:
                return AuthResult(success=False, handled=True)
        password = await self.challenge_auth(self.AuthLoginPasswordChallenge)
        if password is MISSING:
            return AuthResult(success=False)
        return await self._hub_auth("LOGIN", login, password)


class _Template:
    """What aiosmtpd's SMTP.__init__ computes, taken from a freshly built protocol, to build the next ones."""

    _BOUND = ("_smtp_methods", "_auth_methods", "_handle_hooks")

    def __init__(self, proto: HubSMTP):
        self.cls = type(proto)
        self.loop = proto.loop
        base = object.__new__(self.cls)            # what asyncio's StreamReaderProtocol sets up per instance
        self._base_init(base)
        fresh = set(vars(base))
        self.plain = {k: v for k, v in vars(proto).items() if k not in fresh and k not in self._BOUND}
        self.smtp_methods = {cmd: m.__func__.__name__ for cmd, m in proto._smtp_methods.items()}
        # AUTH mechanisms implemented by the protocol are bound to each protocol; the handler's are shared
        self.auth = {name: (a.method.__func__.__name__ if a.is_builtin else None, a)
                     for name, a in proto._auth_methods.items()}
        self.hooks = dict(proto._handle_hooks)

    def _base_init(self, proto) -> None:
        asyncio.StreamReaderProtocol.__init__(
            proto, asyncio.StreamReader(loop=self.loop, limit=self.cls.line_length_limit),
            client_connected_cb=proto._cb_client_connected, loop=self.loop)

    def new(self) -> HubSMTP:
        proto = object.__new__(self.cls)
        self._base_init(proto)
        proto.__dict__.update(self.plain)
        proto._handle_hooks = dict(self.hooks)
        proto._smtp_methods = {cmd: getattr(proto, name) for cmd, name in self.smtp_methods.items()}
        proto._auth_methods = {k: (a if name is None else type(a)(getattr(proto, name), True))
                               for k, (name, a) in self.auth.items()}
        return proto


__all__ = ["HubSMTP", "LoginPassword"]
