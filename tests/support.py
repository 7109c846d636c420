"""Test peers and helpers: a trust-space operator SMTP server that requires a client certificate from the test CA,
a sender-side MTA that collects notifications, an SMTP client, and a hub started in-process on free ports."""

from __future__ import annotations

import asyncio
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP as AioSMTP
from cryptography import x509


SHARED = Path(__file__).resolve().parents[2] / "shared"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    client_subject: str | None
    tls_version: str | None
    mail_options: list[str] = field(default_factory=list)
    rcpt_options: list[str] = field(default_factory=list)


class PeerHandler:
    def __init__(self):
        self.messages: list[Received] = []
        self.rcpt_replies: dict[str, str] = {}     # address -> reply to answer at RCPT
        self.data_reply: str | None = None
        self.transactions = 0
        self.lock = threading.Lock()
        self.transports: set = set()
        self.pipelining = False                    # offer PIPELINING (RFC 2920)
        self.data_already_sent: list[bool] = []    # at each RCPT: was the client's DATA already in our buffer
        self.gate: threading.Semaphore | None = None   # when set: each DATA waits for one release() of it

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        return responses[:-1] + ["250-DSN", *(["250-PIPELINING"] if self.pipelining else []), responses[-1]]

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        self.data_already_sent.append(b"DATA\r\n" in bytes(server._reader._buffer))
        reply = self.rcpt_replies.get(address.lower())
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        while self.gate is not None and not self.gate.acquire(blocking=False):
            await asyncio.sleep(0.02)
        if self.data_reply:
            return self.data_reply
        sslobj = server.transport.get_extra_info("ssl_object")
        subject = None
        version = None
        if sslobj is not None:
            version = sslobj.version()
            der = sslobj.getpeercert(binary_form=True)
            if der:
                subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        with self.lock:
            self.transactions += 1
            self.messages.append(Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content,
                                          subject, version, list(envelope.mail_options),
                                          list(envelope.rcpt_options)))
        return "250 2.0.0 Ok: queued"

    def for_rcpt(self, address: str) -> list[Received]:
        return [m for m in self.messages if address in m.rcpt_tos]


class _DsnSMTP(AioSMTP):
    """A peer that accepts DSN parameters (the stock aiosmtpd refuses unknown MAIL/RCPT parameters)."""

    def connection_made(self, transport):
        super().connection_made(transport)
        self.event_handler.transports.add(transport)

    def _getparams(self, params):
        result = {}
        for p in params:
            k, eq, v = p.partition("=")
            result[k.upper()] = v if eq else True
        for k in ("RET", "ENVID", "NOTIFY", "ORCPT"):
            result.pop(k, None)
        return result


class Peer(Controller):
    """An operator of the trust space: STARTTLS required, client certificate required and verified."""

    def __init__(self, pki, *, port: int | None = None, require_client_cert: bool = True, tls: bool = True,
                 server_cert=None):
        self.handler_obj = PeerHandler()
        ctx = None
        if tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            cert, key = server_cert or pki["peer_server"]
            ctx.load_cert_chain(str(cert), str(key))
            ctx.load_verify_locations(str(pki["ca_file"]))
            ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
        self.port_ = port or free_port()
        super().__init__(self.handler_obj, hostname="127.0.0.1", port=self.port_, tls_context=ctx,
                         require_starttls=tls, ready_timeout=10)

    def factory(self):
        return _DsnSMTP(self.handler, **self.SMTP_kwargs)

    def stop(self, no_assert: bool = False):
        done = threading.Event()

        def close_all():
            for t in list(self.handler_obj.transports):
                t.abort()
            done.set()

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(close_all)
            done.wait(5)
        super().stop(no_assert)

    @property
    def messages(self):
        return self.handler_obj.messages


def trust_list_xml(entries: list[tuple[str, str]]) -> bytes:
    """A small authorised-domains list in the national format (without the closing root tag, like the real one)."""
    body = "".join(
        f"<Domaine><Nom>{d}</Nom><Description>test</Description><DNCertificatOperateur>{dn}</DNCertificatOperateur>"
        f"<ResponsableContact>x</ResponsableContact><SupportContact>x</SupportContact>"
        f"<DateMAJ>2025-01-01T00:00:00Z</DateMAJ></Domaine>\n" for d, dn in entries)
    return ('<?xml version="1.0" encoding="UTF-8"?><ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">'
            "<DateDeGeneration>2025-03-13T14:54:10Z</DateDeGeneration><ListeDomaines>" + body +
            "</ListeDomaines>").encode()


class Client:
    """smtplib against the hub, run in a thread (the hub shares the test's event loop)."""

    def __init__(self, port: int, ca_file: Path, *, user: str | None = None, password: str | None = None,
                 tls: bool = True, client_cert=None):
        self.port, self.ca_file, self.user, self.password, self.tls = port, ca_file, user, password, tls
        self.client_cert = client_cert

    def _open(self) -> smtplib.SMTP:
        s = smtplib.SMTP("127.0.0.1", self.port, timeout=30)
        try:
            s.ehlo("dpi.ch-test.example")
            if self.tls:
                ctx = ssl.create_default_context(cafile=str(self.ca_file))
                if self.client_cert:
                    ctx.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
                s.starttls(context=ctx)
                s.ehlo("dpi.ch-test.example")
            if self.user:
                s.login(self.user, self.password)
        except BaseException:
            s.close()
            raise
        return s

    def send_sync(self, mail_from: str, rcpts: list[str], body: bytes, mail_options=(), rcpt_options=()):
        with self._open() as s:
            return _send(s, mail_from, rcpts, body, list(mail_options), list(rcpt_options))

    async def send(self, mail_from, rcpts, body, mail_options=(), rcpt_options=()):
        return await asyncio.to_thread(self.send_sync, mail_from, rcpts, body, mail_options, rcpt_options)

    async def session(self, fn):
        def run():
            with self._open() as s:
                return fn(s)
        return await asyncio.to_thread(run)


def _send(s: smtplib.SMTP, mail_from, rcpts, body, mail_options, rcpt_options):
    code, msg = s.mail(mail_from, mail_options)
    if code != 250:
        return code, msg.decode()
    ok = 0
    last = (0, "")
    for r in rcpts:
        code, msg = s.rcpt(r, rcpt_options)
        last = (code, msg.decode())
        ok += code == 250
    if not ok:
        s.rset()
        return last
    code, msg = s.data(body)
    return code, msg.decode()


def message(subject: str = "Lettre de liaison", size: int = 0, sender: str = "dpi@ch-test.example",
            to: str = "dr.martin@medecin.mssante.fr") -> bytes:
    text = "Bonjour,\r\nVeuillez trouver le compte rendu.\r\n.leading dot line\r\n"
    if size:
        line = ("x" * 76 + "\r\n")
        text += line * (size // len(line))
    return (f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\nMessage-ID: <{time.time_ns()}@test>\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}").encode()


async def wait_for(predicate, timeout: float = 20.0, interval: float = 0.05):
    """Poll until predicate() is truthy (sync or async); fail after timeout (not a timing assertion: a bound)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached within the bound")
        await asyncio.sleep(interval)


def settings_for(tmp_path, database_url: str, pki, transport: dict[str, int], **sections):
    """Hub settings for a test: free ports, the test PKI, static next hops on loopback."""
    import dataclasses

    from hub import settings as S

    base = S.Settings(
        hub=S.HubSection(data_dir=str(tmp_path / "var"), domains=["hub.example.org"], processes=1),
        database=S.DatabaseSection(url=database_url, pool_min=1, pool_max=10),
        smtp=S.SmtpSection(listen="127.0.0.1:0", hostname="hub.example.org", tls_cert=str(pki["hub_server"][0]),
                           tls_key=str(pki["hub_server"][1]), client_ca_file=str(pki["ca_file"]),
                           max_message_size=1_000_000, auth_failures_per_minute=3),
        http=S.HttpSection(listen="127.0.0.1:0"),
        delivery=S.DeliverySection(client_cert=str(pki["hub_client"][0]), client_key=str(pki["hub_client"][1]),
                                   ca_file=str(pki["ca_file"]),
                                   transport={d: f"127.0.0.1:{p}" for d, p in transport.items()},
                                   tls_policy={"ch-test.example": "none"}, local_domains=["ch-test.example"],
                                   poll_interval=0.2, connect_timeout=5, command_timeout=10),
        queue=S.QueueSection(first_retry=1, max_retry_interval=2, max_lifetime=3600, delay_warning=0),
        rules=S.RulesSection(dir=str(Path(__file__).resolve().parents[1] / "routing_rules"), watch=False),
        transform=S.TransformSection(cda_schema=str(SHARED / "schemas" / "cda" / "CDA_extended.xsd")),
    )
    replaced = {}
    for name, values in sections.items():
        replaced[name] = dataclasses.replace(getattr(base, name), **values)
    return dataclasses.replace(base, **replaced)
