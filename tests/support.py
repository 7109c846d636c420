"""Test peers and helpers: a trust-space operator SMTP server that requires a client certificate from the test CA,
a sender-side MTA that collects notifications, an SMTP client, and a hub started in-process on free ports."""

from __future__ import annotations

import asyncio
import os
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
if not SHARED.exists():                      # a worktree elsewhere: as tests/conftest.py, HUB_SHARED
    SHARED = Path(os.environ.get("HUB_SHARED", "../shared")).resolve()


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


class RawSMTP:
    """A raw SMTP client on asyncio streams: the exact bytes given go out (no quoting, no encoding, no dot-stuffing
    unless asked), each reply comes back as (code, text of all its lines)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, ca_file: Path | None = None, *, user: str | None = None,
                   password: str | None = None, client_cert=None, ehlo: bytes = b"dpi.ch-test.example"):
        import base64

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        c = cls(reader, writer)
        assert (await c.reply())[0] == 220
        assert (await c.cmd(b"EHLO " + ehlo))[0] == 250
        if ca_file is not None:
            assert (await c.cmd(b"STARTTLS"))[0] == 220
            ctx = ssl.create_default_context(cafile=str(ca_file))
            if client_cert:
                ctx.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
            await writer.start_tls(ctx, server_hostname="localhost")
            assert (await c.cmd(b"EHLO " + ehlo))[0] == 250
        if user:
            code, text = await c.cmd(b"AUTH PLAIN " + base64.b64encode(f"\0{user}\0{password}".encode()))
            assert code == 235, text
        return c

    async def reply(self, timeout: float = 30) -> tuple[int, str]:
        lines = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), timeout)
            if not line:
                raise ConnectionError("connection closed by the server")
            lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            if line[3:4] != b"-":
                return int(line[:3]), "\n".join(lines)

    async def cmd(self, line: bytes) -> tuple[int, str]:
        self.writer.write(line + b"\r\n")
        return await self.reply()

    async def send(self, mail_from: bytes, rcpts: list[bytes], content: bytes) -> tuple[int, str]:
        """MAIL, RCPT each, DATA with `content` (dot-stuffed here): the last reply (MAIL's or RCPT's if refused)."""
        reply = await self.cmd(b"MAIL FROM:<" + mail_from + b">")
        if reply[0] != 250:
            return reply
        for r in rcpts:
            reply = await self.cmd(b"RCPT TO:<" + r + b">")
            if reply[0] != 250:
                await self.cmd(b"RSET")
                return reply
        reply = await self.cmd(b"DATA")
        if reply[0] != 354:
            return reply
        body = content if content.endswith(b"\r\n") else content + b"\r\n"
        self.writer.write((b"." if body.startswith(b".") else b"") + body.replace(b"\r\n.", b"\r\n..") + b".\r\n")
        return await self.reply()

    async def close(self) -> None:
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, ssl.SSLError):
            pass


class SigningCA:
    """The test CA (trustme) used directly with `cryptography`: certificates that name a CRL distribution point,
    and CRLs signed by the CA (or by another key, to test signatures)."""

    def __init__(self, ca, base: Path):
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        self.cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
        self.key = load_pem_private_key(ca.private_key_pem.bytes(), None)
        self.base = base

    def issue(self, name: str, crl_url: str | None, *, common_name: str, organization: str = "OPERATEUR TEST",
              hosts=("localhost", "127.0.0.1")) -> tuple[Path, Path, int]:
        import datetime as dt
        import ipaddress

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        names = [x509.IPAddress(ipaddress.ip_address(h)) if h[0].isdigit() else x509.DNSName(h) for h in hosts]
        builder = (x509.CertificateBuilder()
                   .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                                            x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                   .issuer_name(self.cert.subject).public_key(key.public_key())
                   .serial_number(x509.random_serial_number())
                   .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.SubjectAlternativeName(names), critical=False)
                   .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                         ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                                  critical=False))
        if crl_url:
            builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
                full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None, reasons=None,
                crl_issuer=None)]), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path, key_path = self.base / f"{name}.pem", self.base / f"{name}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        return cert_path, key_path, cert.serial_number

    def crl(self, revoked=(), *, this_update=None, next_update=None, signer=None) -> bytes:
        """A DER CRL of this CA listing `revoked` serials (key compromise), valid from an hour ago for a day."""
        import datetime as dt

        from cryptography.hazmat.primitives import hashes, serialization

        now = dt.datetime.now(dt.timezone.utc)
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.cert.subject)
                   .last_update(this_update or now - dt.timedelta(hours=1))
                   .next_update(next_update or now + dt.timedelta(days=1)))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now - dt.timedelta(minutes=10))
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False).build())
        return builder.sign(signer or self.key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class CrlServer:
    """An HTTP server standing in for the national CRL download servers: serves `body` (or answers `status`) at
    /ca.crl, in the test's event loop."""

    def __init__(self):
        self.body = b""
        self.status = 200
        self.requests = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ca.crl"
        self._runner = None

    async def start(self) -> "CrlServer":
        from aiohttp import web

        async def serve(request):
            self.requests += 1
            if self.status != 200:
                return web.Response(status=self.status, text="unavailable")
            return web.Response(body=self.body, content_type="application/pkix-crl")

        app = web.Application()
        app.router.add_get("/ca.crl", serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
