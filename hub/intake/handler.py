"""The aiosmtpd handler: intake policy. Who may send (AUTH, client certificate, client network), as whom (MAIL
FROM allowed for the account), to whom (never an open relay: the trust space, the hub's own domains and the
configured local destinations only), how much, and the durable acceptance: `250 2.0.0 queued as <id>` only after
the message, its recipients and the `received` audit event are committed in one transaction; any doubt is
`451 4.3.0`.

Input trusted: nothing from the client. Settings read: smtp.*, hub.domains.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import ssl
import time
from email.utils import formatdate

import asyncpg
import structlog
from aiosmtpd.smtp import AuthResult, LoginPassword

from hub import observability as obs
from hub.audit.store import Event
from hub.delivery.client import WireBody
from hub.delivery.notify import new_message_id
from hub.db import UNAVAILABLE
from hub.errors import HubError, TemporaryError
from hub.intake import limits, replies
from hub.intake.accounts import AccountBook
from hub.intake.auth import CredentialCache, FailureLimiter, verify_password
from hub.intake.store import NewMessage, insert_message
from hub.pipeline import Router, RoutedMessage

log = structlog.get_logger("hub.intake")
_NIL = re.compile(rb"\r\nx-mss-nil:", re.IGNORECASE)


def peer_subject(server) -> str | None:
    """The client certificate's subject (RFC 4514), or None. Parsed once per TLS session (~30 µs a parse; MAIL,
    its revocation check and DATA each ask): kept on the SMTP session with the TLS object it was read from."""
    transport = server.transport
    if transport is None:
        return None
    sslobj = transport.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    session = server.session
    known = getattr(session, "hub_peer_subject", None)
    if known is not None and known[0] is sslobj:
        return known[1]
    der = sslobj.getpeercert(binary_form=True)
    subject = None
    if der:
        from cryptography import x509

        subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
    if session is not None:
        session.hub_peer_subject = (sslobj, subject)
    return subject


def tls_version(server) -> str | None:
    transport = server.transport
    sslobj = transport.get_extra_info("ssl_object") if transport is not None else None
    return sslobj.version() if sslobj is not None else None


class IntakeHandler:
    def __init__(self, *, settings, pool, accounts: AccountBook, router: Router, revocation=None):
        self.settings = settings
        self.revocation = revocation      # hub.revocation.RevocationChecker, for certificate logins
        self.pool = pool
        self.accounts = accounts
        self.router = router
        self.limiter = FailureLimiter(pool, settings.smtp.auth_failures_per_minute)
        self.creds = CredentialCache()
        self.closing = False
        self.on_queued = None             # callables set by the composition root (wake the local workers)
        self.on_processing = None
        self.delivery = None              # this process's delivery worker: takes accepted messages at once
        self.in_flight = 0
        self.sessions: set = set()        # live protocol instances, closed at shutdown
        self.max_connections = settings.smtp.max_connections

    # ---- session -------------------------------------------------------------------------------------------
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if self.closing:
            return [replies.SHUTTING_DOWN]
        offered = [r for r in responses[:-1] if r != "250-SMTPUTF8"]     # MSSanté addresses are ASCII
        return offered + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN", responses[-1]]

    async def handle_exception(self, error: Exception) -> str:
        """An exception escaping an SMTP command (aiosmtpd would answer `500 Error: (X) text`): logged here, and the
        client gets a plain temporary failure, never the exception's text."""
        log.error("smtp_command_failed", error=type(error).__name__, exc_info=error)
        obs.SMTP_REPLIES.labels("451").inc()
        return replies.TEMP_FAILURE

    async def authenticate(self, server, session, mechanism: str, login: bytes, password: bytes) -> AuthResult:
        ip = session.peer[0] if session.peer else "?"
        name = login.decode("utf-8", "replace")
        secret = password.decode("utf-8", "replace")
        account = self.accounts.by_name(name)
        known = bool(account is not None and account.password_hash and
                     self.creds.get(name, secret, account.password_hash))
        try:
            state, slot = await self.limiter.begin(ip, verify=not known)
        except (*UNAVAILABLE, asyncpg.PostgresError) as exc:
            # no count without the database: credentials verified moments ago guess nothing and go on (DATA will
            # answer 451 if the database is still away); any other attempt waits
            log.warning("auth_check_failed", peer=ip, error=type(exc).__name__)
            if not known:
                return AuthResult(success=False, handled=False, message=replies.AUTH_TEMP_FAILURE)
            state, slot = "ok", 0
        if state != "ok":
            obs.AUTH.labels(state).inc()
            reply = replies.AUTH_TOO_MANY if state == "blocked" else replies.AUTH_TEMP_FAILURE
            log.warning("auth_refused", peer=ip, account=name[:100], mechanism=mechanism, reason=state, reply=reply,
                        pid=os.getpid())
            return AuthResult(success=False, handled=False, message=reply)
        ok = known
        if not known:
            try:
                if account is not None and account.password_hash:
                    loop = asyncio.get_running_loop()
                    ok = await loop.run_in_executor(None, verify_password, secret, account.password_hash)
                    if ok:
                        self.creds.put(name, secret, account.password_hash)
            finally:
                try:
                    await self.limiter.end(slot, ok)
                except (*UNAVAILABLE, asyncpg.PostgresError) as exc:     # the slot expires with the window
                    log.warning("auth_record_failed", peer=ip, error=type(exc).__name__)
        if not ok:
            obs.AUTH.labels("failed").inc()
            log.warning("auth_failed", peer=ip, account=name[:100], mechanism=mechanism, reply=replies.AUTH_INVALID,
                        pid=os.getpid())
            return AuthResult(success=False, handled=False, message=replies.AUTH_INVALID)
        session.hub_account = account
        obs.AUTH.labels("ok").inc()
        return AuthResult(success=True, auth_data=LoginPassword(login, b""), message=replies.AUTH_OK)

    def _account_for(self, server, session, mail_from: str):
        """(account, reply-if-refused)."""
        account = getattr(session, "hub_account", None)
        if account is None:
            subject = peer_subject(server)
            if subject:
                account = self.accounts.by_subject(subject)
        if account is not None:
            if not self.accounts.is_active(account.name):      # disabled since login
                return account, replies.AUTH_REQUIRED
            if mail_from and not account.may_send_as(mail_from):
                return account, replies.SENDER_NOT_ALLOWED
            return account, None
        ip = session.peer[0] if session.peer else ""
        account, allowed = self.accounts.by_network(ip, mail_from)
        if account is None:
            return None, replies.AUTH_REQUIRED
        if not allowed and mail_from:
            return account, replies.SENDER_NOT_ALLOWED
        return account, None

    async def handle_MAIL(self, server, session, envelope, address, dsn):
        if self.closing:
            return replies.SHUTTING_DOWN
        try:
            await self.accounts.maybe_refresh(self.pool)
            await self.router.refresh(self.pool)
        except UNAVAILABLE:
            pass                                   # keep the last view; DATA will answer 451 if the DB is gone
        account, refusal = self._account_for(server, session, address)
        if account is not None and refusal is None and getattr(session, "hub_account", None) is None:
            refusal = await self._certificate_refusal(server, session, account)
        if refusal:
            obs.SMTP_REPLIES.labels(refusal[:3]).inc()
            self.log_refusal("sender_refused", session, None, refusal, account=account, sender_domain=_domain(address))
            return refusal
        envelope.hub_account = account
        envelope.hub_recipients = []
        envelope.hub_ruleset = self.router.ruleset()       # one rule-set version for the whole message
        return replies.SENDER_OK

    async def _certificate_refusal(self, server, session, account) -> str | None:
        """When the account was found by the client certificate: its revocation status, checked once per session
        (revoked: 550 5.7.1; unknown under revocation.unavailable = defer: 451 4.7.0; both with the reason)."""
        if self.revocation is None or account.cert_subject is None:
            return None
        sslobj = server.transport.get_extra_info("ssl_object") if server.transport is not None else None
        der = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not der or self.accounts.by_subject(peer_subject(server) or "") != account:
            return None                               # identified by its network, not by this certificate
        decision = getattr(session, "hub_certificate", None)
        if decision is None:
            decision = session.hub_certificate = await self.revocation.check(der)
        if decision.action == "refuse":
            return replies.CERT_REVOKED.format(reason=decision.verdict.reason)
        if decision.action == "defer":
            session.hub_certificate = None            # checked again at the next attempt
            return replies.CERT_STATUS_UNKNOWN.format(reason=decision.verdict.reason)
        return None

    async def handle_RCPT(self, server, session, envelope, address, options):
        if self.closing:
            return replies.SHUTTING_DOWN
        local, at, domain = address.rpartition("@")
        if not at or (local.lower() == "postmaster" and domain.lower() == self.settings.resolution_domain):
            # `<Postmaster>` (the protocol lets no other address without a domain through), or the postmaster of the
            # resolution domain (not a national id): exactly as postmaster@ the first hub domain (RFC 5321 4.5.1)
            address = f"postmaster@{self.settings.hub.domains[0].lower()}"
        if len(envelope.rcpt_tos) >= self.settings.smtp.max_recipients:
            self.log_refusal("recipient_refused", session, envelope, replies.TOO_MANY_RCPTS,
                             recipient_domain=_domain(address))
            return replies.TOO_MANY_RCPTS
        try:
            outcome = await self.router.at_rcpt(self.pool, envelope.hub_account, envelope.mail_from, address,
                                                options, envelope.hub_ruleset)
        except (HubError, *UNAVAILABLE) as exc:
            log.warning("rcpt_check_failed", error=str(exc))
            return replies.TEMP_FAILURE
        if outcome.reply is not None:
            obs.SMTP_REPLIES.labels(outcome.reply[:3]).inc()
            self.log_refusal("recipient_refused", session, envelope, outcome.reply, recipient_domain=_domain(address))
            return outcome.reply
        envelope.rcpt_tos.append(address)          # counted (smtp.max_recipients) and answered like the first
        if all(r.address != outcome.recipient.address for r in envelope.hub_recipients):
            envelope.hub_recipients.append(outcome.recipient)      # a mailbox named twice is delivered once
        return replies.RCPT_OK

    async def handle_DATA(self, server, session, envelope):
        if self.closing:
            return replies.SHUTTING_DOWN
        smtp = self.settings.smtp
        refusal = limits.refusal(envelope.content, max_header_size=smtp.max_header_size,
                                 max_header_fields=smtp.max_header_fields)
        if refusal is not None:
            obs.SMTP_REPLIES.labels(refusal[:3]).inc()
            log.info("message_refused", account=getattr(envelope.hub_account, "name", None), reply=refusal)
            return refusal
        self.in_flight += 1
        started = time.perf_counter()
        account = envelope.hub_account
        message_id = new_message_id()
        try:
            body = self._received_header(server, session, envelope, message_id) + envelope.content
            if getattr(envelope, "hub_canonical", False):      # the Received lines are CRLF-ended, never a dot
                body = WireBody(body)
            routed: RoutedMessage = self.router.at_data(account, envelope.mail_from, envelope.hub_recipients,
                                                        body, envelope.hub_ruleset)
            if routed.reply is not None:
                obs.SMTP_REPLIES.labels(routed.reply[:3]).inc()
                self.log_refusal("message_refused", session, envelope, routed.reply, message_id=message_id)
                return routed.reply
            dsn = getattr(envelope, "hub_dsn", {}) or {}
            msg = NewMessage(id=message_id, account=account.name if account else None,
                             mail_from=envelope.mail_from or "", body=body, recipients=routed.recipients,
                             state=routed.state, peer=session.peer[0] if session.peer else None,
                             helo=session.host_name, tls_version=tls_version(server), envid=dsn.get("envid"),
                             ret=dsn.get("ret"), rule_version=routed.rule_version)
            received = Event("received", message_id=message_id, account=msg.account, sender=msg.mail_from,
                             recipients=tuple(r.address for r in msg.recipients),
                             facts={"peer": msg.peer, "helo": msg.helo, "tls": msg.tls_version,
                                    "size": len(body),
                                    "login": "auth" if getattr(session, "hub_account", None) else
                                    ("certificate" if peer_subject(server) else "network")})
            # a message ready for delivery is leased at once by this process's delivery worker when it has free
            # slots for it: no claim from the queue, the body is already in memory
            reserved = await self.delivery.reserve(msg) if self.delivery is not None and msg.state == "queued" \
                else 0
            try:
                async with self.pool.acquire() as conn:  # one statement, its own transaction: committed on return
                    accepted = await insert_message(
                        conn, msg, [received, *routed.events(message_id, msg.account, msg.mail_from)],
                        lease_owner=self.delivery.owner if reserved else None,
                        lease_seconds=self.settings.delivery.lease_seconds)
            except BaseException:
                if reserved:
                    self.delivery.unreserve(reserved)
                raise
        except (TemporaryError, *UNAVAILABLE) as exc:
            obs.SMTP_REPLIES.labels("451").inc()
            log.warning("intake_failed", message_id=message_id, error=f"{type(exc).__name__}: {exc}")
            return replies.TEMP_FAILURE
        except asyncpg.exceptions.DataError as exc:    # PostgreSQL refuses these bytes: it would at every retry
            obs.SMTP_REPLIES.labels("554").inc()
            log.error("intake_refused_data", message_id=message_id, error=f"{type(exc).__name__}: {exc}")
            return replies.DATA_REFUSED
        except Exception as exc:   # any doubt is a 4xx: the client keeps the message
            obs.SMTP_REPLIES.labels("451").inc()
            log.exception("intake_failed", message_id=message_id, error=f"{type(exc).__name__}: {exc}")
            return replies.TEMP_FAILURE
        finally:
            self.in_flight -= 1
        envelope.hub_after_reply = functools.partial(self._accepted, msg, accepted, reserved,
                                                     time.perf_counter() - started)
        return replies.QUEUED.format(id=message_id)

    def _accepted(self, msg: NewMessage, accepted, reserved: int, seconds: float) -> None:
        """What follows the commit of a message, run once its 250 is written (HubSMTP.smtp_DATA): nothing here may
        change the reply, so a failure is logged and the message stays as committed (the queue, or the lease's
        expiry, delivers it)."""
        try:
            # wake this process's workers; no NOTIFY inside the transaction: PostgreSQL serialises every commit
            # that notifies behind one lock held until the commit is flushed (other processes poll,
            # delivery.poll_interval)
            if reserved:
                self.delivery.hand_over(msg, accepted["received_at"], accepted["ids"], reserved)
            else:
                waker = self.on_queued if msg.state == "queued" else self.on_processing
                if waker is not None:
                    waker()
            obs.RECEIVED.labels(msg.account or "-").inc()
            obs.INTAKE_SECONDS.observe(seconds)
            obs.SMTP_REPLIES.labels("250").inc()
            log.info("message_queued", message_id=msg.id, account=msg.account, size=len(msg.body),
                     recipients=len(msg.recipients), state=msg.state)
        except Exception as exc:
            log.exception("after_queued_failed", message_id=msg.id, error=type(exc).__name__)

    def log_refusal(self, event: str, session, envelope, reply: str, *, account=None, **facts) -> None:
        """Every refusal is logged with the account (or the login tried), the peer and the reply; never an address's
        local part (recipients are named by domain)."""
        if account is None:
            account = getattr(envelope, "hub_account", None) or getattr(session, "hub_account", None)
        log.warning(event, peer=session.peer[0] if session and session.peer else None,
                    account=account.name if account is not None else None, reply=reply, **facts)

    def _received_header(self, server, session, envelope, message_id: str) -> bytes:
        peer = session.peer[0] if session.peer else "unknown"
        proto = "ESMTPS" if tls_version(server) else "ESMTP"
        if getattr(session, "hub_account", None) is not None:
            proto += "A"
        one = envelope.rcpt_tos[0] if len(envelope.rcpt_tos) == 1 else None
        line = (f"Received: from {session.host_name or 'unknown'} ([{peer}])\r\n\tby {self.settings.smtp.hostname}"
                f" (hub) with {proto} id {message_id}"
                + (f"\r\n\tfor <{one}>" if one else "") + f"; {formatdate(localtime=True)}\r\n")
        stamp = line.encode("utf-8", "replace")
        content = envelope.content
        end = content.find(b"\r\n\r\n")
        if not _NIL.search(b"\r\n" + (content if end < 0 else content[:end])):    # the header section only
            stamp += f"X-MSS-NIL: {self.settings.hub.nil}\r\n".encode("ascii", "replace")
        return stamp


def _domain(address: str | None) -> str | None:
    return address.rpartition("@")[2].lower()[:255] if address else None


def server_tls_context(settings) -> ssl.SSLContext | None:
    if not settings.smtp.tls_cert:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(settings.smtp.tls_cert, settings.smtp.tls_key)
    if settings.smtp.client_ca_file:
        ctx.load_verify_locations(settings.smtp.client_ca_file)
        ctx.verify_mode = ssl.CERT_OPTIONAL      # certificate login for establishments that have one
    return ctx
