"""`hub quickstart`: a local hub that delivers a message, for a first look (never for production).

In DIR (default ./var/quickstart) it creates, once: a test certificate authority standing in for IGC-Santé, the
hub's SMTP server certificate (STARTTLS for establishments), its client certificate (mutual TLS towards the trust
space) and a stand-in operator's certificate; a configuration (DIR/hub.toml) whose trust space is one domain,
medecin.quickstart.test, served by the stand-in operator on loopback; a one-domain authorised-domains list; the
establishment account `ch-quickstart` with a generated password (DIR/password). Then it runs `hub serve` with that
configuration (its log in DIR/hub.log) and the stand-in operator (mutual TLS, client certificate verified against
the test CA, every message saved in DIR/operator/), prints the `curl` and `swaks` commands that send a message,
and says so when the operator receives one. Ctrl-C stops both.
"""

from __future__ import annotations

import datetime as dt
import os
import secrets
import shlex
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

DOMAIN = "medecin.quickstart.test"
HUB_DOMAIN = "hub.quickstart.test"
ACCOUNT = "ch-quickstart"
SENDER = "dpi@ch-quickstart.test"
RECIPIENT = f"dr.martin@{DOMAIN}"
OPERATOR_DN = "CN=smtp.operateur.quickstart.test,O=OPERATEUR QUICKSTART"


def register(sub) -> None:
    p = sub.add_parser("quickstart", help="a local test hub, certificates and a stand-in trust-space operator: "
                                          "send a message and see it delivered")
    p.add_argument("--dir", type=Path, default=Path("var/quickstart"), help="where everything goes"
                   " (default: var/quickstart)")
    p.add_argument("--smtp-port", type=int, default=2525)
    p.add_argument("--http-port", type=int, default=8025)
    p.add_argument("--operator-port", type=int, default=2526, help="the stand-in operator's SMTP port")
    p.add_argument("--rules", type=Path, default=Path("routing_rules"), help="routing rules (default: ./routing_rules)")
    p.set_defaults(run=lambda args, ctx: run(args), sync=True)


# ---- certificates (cryptography; a test CA, never for production) ---------------------------------------------
def _name(cn: str, org: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, org), x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key) -> None:
    from cryptography.hazmat.primitives import serialization

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))


def make_pki(pki: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID
    import ipaddress

    if (pki / "ca.pem").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name("Quickstart test CA (not IGC-Sante)", "HUB QUICKSTART")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + dt.timedelta(days=365))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    (pki / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, cn: str, org: str, usages, names=()):
        key = ec.generate_private_key(ec.SECP256R1())
        sans = [x509.DNSName(n) for n in names] + [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        cert = (x509.CertificateBuilder().subject_name(_name(cn, org)).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + dt.timedelta(days=90))
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.SubjectAlternativeName(sans), critical=False)
                .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
                .sign(ca_key, hashes.SHA256()))
        (pki / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(pki / f"{stem}.key", key)

    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    issue("hub-server", "localhost", "HUB QUICKSTART", [server], ["localhost", HUB_DOMAIN])
    issue("hub-client", HUB_DOMAIN, "HUB QUICKSTART", [client], [HUB_DOMAIN])
    issue("operator", "smtp.operateur.quickstart.test", "OPERATEUR QUICKSTART", [server, client],
          ["localhost", "smtp.operateur.quickstart.test"])


def write_files(d: Path, args) -> tuple[Path, str]:
    d = d.resolve()
    d.mkdir(parents=True, exist_ok=True)
    make_pki(d / "pki")
    pw = d / "password"
    if not pw.exists():
        fd = os.open(pw, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(18) + "\n")
    password = pw.read_text().strip()
    pki = d / "pki"
    config = d / "hub.toml"
    config.write_text(f"""# written by `hub quickstart`: a local test hub (test certificates, loopback only)
[hub]
data_dir = "{d / 'data'}"
domains = ["{HUB_DOMAIN}"]
processes = 1
[smtp]
listen = "127.0.0.1:{args.smtp_port}"
hostname = "{HUB_DOMAIN}"
tls_cert = "{pki / 'hub-server.pem'}"
tls_key = "{pki / 'hub-server.key'}"
[http]
listen = "127.0.0.1:{args.http_port}"
[delivery]
client_cert = "{pki / 'hub-client.pem'}"
client_key = "{pki / 'hub-client.key'}"
ca_file = "{pki / 'ca.pem'}"
poll_interval = 0.5
[delivery.transport]
"{DOMAIN}" = "127.0.0.1:{args.operator_port}"
[rules]
dir = "{args.rules.resolve()}"
{_transform_section()}""")
    (d / "liste-blanche.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?><ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">'
        f"<DateDeGeneration>{dt.datetime.now(dt.timezone.utc):%Y-%m-%dT%H:%M:%SZ}</DateDeGeneration><ListeDomaines>"
        f"<Domaine><Nom>{DOMAIN}</Nom><Description>quickstart stand-in operator</Description>"
        f"<DNCertificatOperateur>{OPERATOR_DN}</DNCertificatOperateur><ResponsableContact>-</ResponsableContact>"
        f"<SupportContact>-</SupportContact><DateMAJ>2025-01-01T00:00:00Z</DateMAJ></Domaine>"
        "</ListeDomaines></ListeBlancheMSSante>")
    (d / "message.eml").write_bytes(
        (f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: Lettre de liaison (quickstart)\r\n"
         f"Message-ID: <{secrets.token_hex(8)}@ch-quickstart.test>\r\nMIME-Version: 1.0\r\n"
         "Content-Type: text/plain; charset=utf-8\r\n\r\nBonjour,\r\nceci est un message de test du quickstart.\r\n")
        .encode())
    return config, password


def _transform_section() -> str:
    """The ANS rules and the CDA schema when they lie beside the repository (../shared): every CDA the quickstart
    hub produces is then checked as in production (deploy/README.md, "ANS conformance rules")."""
    for shared in (Path.cwd().parent / "shared", Path(__file__).resolve().parents[2] / "shared"):
        rules, xsd = shared / "schematrons/ansforge/schematrons", shared / "schemas/cda/CDA_extended.xsd"
        if rules.is_dir():
            schema = f'cda_schema = "{xsd.resolve()}"\n' if xsd.is_file() else ""
            return f'[transform]\n{schema}schematron_dir = "{rules.resolve()}"\n'
    return ""


# ---- the stand-in operator -----------------------------------------------------------------------------------
class _Operator:
    """An MSSanté operator on loopback: STARTTLS required, the hub's client certificate required and verified."""

    def __init__(self, d: Path, port: int):
        from aiosmtpd.controller import Controller

        pki = d / "pki"
        self.out = d / "operator"
        self.out.mkdir(exist_ok=True)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(pki / "operator.pem"), str(pki / "operator.key"))
        ctx.load_verify_locations(str(pki / "ca.pem"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        self.controller = Controller(self, hostname="127.0.0.1", port=port, tls_context=ctx, require_starttls=True,
                                     ready_timeout=10)
        self.count = len(list(self.out.glob("*.eml")))

    async def handle_DATA(self, server, session, envelope):
        import re

        self.count += 1
        path = self.out / f"{self.count:04d}.eml"
        path.write_bytes(envelope.original_content or envelope.content)
        head = (envelope.original_content or b"").split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        m = re.search(r"\(hub\) with \S+ id (\w+)", head)
        mid = m.group(1) if m else "?"
        print(f"\nquickstart: the stand-in operator received message {mid} for {', '.join(envelope.rcpt_tos)}"
              f" (mutual TLS), saved as {path}\n  see its audit trail: {_hub()} --config {self.config} audit"
              f" timeline {mid}\n", flush=True)
        return "250 2.0.0 Ok: stored by the quickstart operator"


def _hub() -> str:
    exe = Path(sys.executable).parent / "hub"
    return shlex.quote(os.path.relpath(exe)) if exe.exists() else "hub"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise SystemExit("quickstart: the hub did not start:\n  " + "\n  ".join(tail))
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            time.sleep(0.3)
    raise SystemExit(f"quickstart: the hub did not answer {url} within {timeout:.0f} s; see {log}")


def run(args) -> int:
    import logging

    logging.getLogger("mail.log").setLevel(logging.ERROR)   # aiosmtpd's notice about CERT_REQUIRED: intended
    d = args.dir
    if not args.rules.is_dir():
        print(f"hub: error: --rules {args.rules}: no such directory (run from the repository, or give --rules)",
              file=sys.stderr)
        return 2
    config, password = write_files(d, args)
    d = d.resolve()
    hub = [sys.executable, "-m", "hub", "--config", str(config)]
    operator = _Operator(d, args.operator_port)
    operator.config = os.path.relpath(config)
    operator.controller.start()
    log = d / "hub.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_")}
    # before `hub serve`: the hub starts with the account and the list loaded
    for cmd, stdin in ((["accounts", "add", ACCOUNT, "--password-stdin", "--allow-from", "ch-quickstart.test"],
                        password + "\n"), (["trust", "import", str(d / "liste-blanche.xml"), "--force"], None)):
        done = subprocess.run(hub + cmd, input=stdin, text=True, capture_output=True, env=env)
        if done.returncode != 0:
            operator.controller.stop()
            raise SystemExit(f"quickstart: hub {' '.join(cmd[:2])} failed: {done.stderr.strip()}")
    with log.open("ab") as out:
        proc = subprocess.Popen(hub + ["serve"], stdout=out, stderr=subprocess.STDOUT, env=env)
    stop = threading.Event()
    try:
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        _wait_healthy(f"http://127.0.0.1:{args.http_port}/healthz", proc, log)
        rel = os.path.relpath
        print(f"""quickstart: a local hub runs (SMTP 127.0.0.1:{args.smtp_port} with STARTTLS, HTTP 127.0.0.1:{args.http_port},
its log in {rel(log)}), with a stand-in MSSanté operator for {DOMAIN} on 127.0.0.1:{args.operator_port}.
The establishment account is {ACCOUNT} (password in {rel(d / 'password')}). In another terminal, send a message:

  curl -sS --url smtp://127.0.0.1:{args.smtp_port} --ssl-reqd --cacert {rel(d / 'pki/ca.pem')} \\
       --user '{ACCOUNT}:{password}' --mail-from {SENDER} --mail-rcpt {RECIPIENT} \\
       --upload-file {rel(d / 'message.eml')}

or with swaks:

  swaks --server 127.0.0.1:{args.smtp_port} --tls --tls-ca-path {rel(d / 'pki/ca.pem')} --auth LOGIN \\
        --auth-user {ACCOUNT} --auth-password '{password}' --from {SENDER} --to {RECIPIENT} \\
        --data {rel(d / 'message.eml')}

Then watch the queue and the audit trail:  {_hub()} --config {rel(config)} queue list
Ctrl-C stops the hub and the operator.""", flush=True)
        while not stop.is_set() and proc.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        operator.controller.stop()
    return 0 if proc.returncode in (0, None, -signal.SIGTERM) else 1
