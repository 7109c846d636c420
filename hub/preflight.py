"""Start-up checks of `hub serve`: every file, address and setting is checked before anything starts; the first
problem stops the hub with one line naming the setting and the file or address.

    files      smtp.tls_cert + smtp.tls_key, delivery.client_cert + delivery.client_key: readable, PEM, the key
               matching the certificate; smtp.client_ca_file, delivery.ca_file: readable PEM certificates;
               rules.dir (a directory), transform.cda_schema, transform.loinc_map, hub.data_dir (writable)
    addresses  smtp.listen and http.listen are bound here, once, by the supervisor (`bind_listeners`): a port in
               use or an address that cannot be bound is refused before any worker starts. The workers inherit
               the sockets; no other process can join them (see `bind_listeners`)
    data_dir   locked (`lock_data_dir`): a second `hub serve` on the same data directory is refused

A problem is a ConfigError (exit 2: systemd's RestartPreventExitStatus=2 keeps it from respawning); an unreachable
database is DatabaseUnavailable (exit 1: worth retrying), raised by the caller (hub.app.serve).
Also returns what the metrics need: each certificate's expiry (hub_certificate_expiry_timestamp_seconds).
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import os
import pwd
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from hub.errors import ConfigError
from hub.settings import Settings, split_hostport


@dataclass(frozen=True)
class CertInfo:
    setting: str               # e.g. "smtp.tls_cert"
    path: str
    subject: str
    not_after: dt.datetime     # the earliest expiry for a CA bundle


def _whoami() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def read_file(setting: str, path: str) -> bytes:
    """The file's bytes, or ConfigError naming the setting, the path and what is wrong with it."""
    p = Path(path)
    try:
        return p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"setting {setting}: {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"setting {setting}: {path}: is a directory, expected a file") from None
    except PermissionError:
        raise ConfigError(f"setting {setting}: {path}: permission denied (the hub runs as user {_whoami()})") \
            from None
    except OSError as exc:
        raise ConfigError(f"setting {setting}: {path}: {exc.strerror}") from None


def certificates(setting: str, path: str) -> list[x509.Certificate]:
    data = read_file(setting, path)
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        certs = []
    if not certs:
        raise ConfigError(f"setting {setting}: {path}: no PEM certificate in the file")
    return certs


def _private_key(setting: str, path: str):
    data = read_file(setting, path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise ConfigError(f"setting {setting}: {path}: the key is encrypted; the hub needs an unencrypted key "
                          "readable only by its user") from None
    except (ValueError, UnsupportedAlgorithm):
        raise ConfigError(f"setting {setting}: {path}: not a PEM private key") from None


def _spki(key) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def cert_and_key(cert_setting: str, cert_path: str, key_setting: str, key_path: str) -> CertInfo:
    cert = certificates(cert_setting, cert_path)[0]
    key = _private_key(key_setting, key_path)
    if _spki(cert.public_key()) != _spki(key.public_key()):
        raise ConfigError(f"settings {cert_setting} and {key_setting}: the key {key_path} does not match the "
                          f"certificate {cert_path}")
    try:                           # what the TLS library will do with them
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert_path, key_path)
    except ssl.SSLError as exc:
        raise ConfigError(f"settings {cert_setting} and {key_setting}: {cert_path}: {exc.reason or exc}") from None
    return CertInfo(cert_setting, cert_path, cert.subject.rfc4514_string(), cert.not_valid_after_utc)


def ca_file(setting: str, path: str) -> CertInfo:
    certs = certificates(setting, path)
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except ssl.SSLError as exc:
        raise ConfigError(f"setting {setting}: {path}: {exc.reason or exc}") from None
    first = min(certs, key=lambda c: c.not_valid_after_utc)
    return CertInfo(setting, path, first.subject.rfc4514_string(), first.not_valid_after_utc)


def certificate_infos(s: Settings) -> list[CertInfo]:
    """Check every certificate, key and CA file that is configured; their expiry for the metrics."""
    out = []
    if s.smtp.tls_cert:
        out.append(cert_and_key("smtp.tls_cert", s.smtp.tls_cert, "smtp.tls_key", s.smtp.tls_key))
    if s.smtp.client_ca_file:
        out.append(ca_file("smtp.client_ca_file", s.smtp.client_ca_file))
    if s.delivery.client_cert:
        out.append(cert_and_key("delivery.client_cert", s.delivery.client_cert,
                                "delivery.client_key", s.delivery.client_key))
    if s.delivery.ca_file:
        out.append(ca_file("delivery.ca_file", s.delivery.ca_file))
    return out


def check(s: Settings) -> list[CertInfo]:
    """Every file and directory the configuration names (not the addresses, not the database)."""
    infos = certificate_infos(s)
    rules = Path(s.rules.dir)
    if not rules.is_dir():
        raise ConfigError(f"setting rules.dir: {rules}: " + ("not a directory" if rules.exists() else
                                                             "no such directory"))
    if not os.access(rules, os.R_OK | os.X_OK):
        raise ConfigError(f"setting rules.dir: {rules}: permission denied (the hub runs as user {_whoami()})")
    for setting, path in (("transform.cda_schema", s.transform.cda_schema),
                          ("transform.loinc_map", s.transform.loinc_map)):
        if path:
            read_file(setting, path)
    data = s.data_dir
    try:
        data.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"setting hub.data_dir: {data}: cannot create it: {exc.strerror}") from None
    if not os.access(data, os.W_OK | os.X_OK):
        raise ConfigError(f"setting hub.data_dir: {data}: not writable by user {_whoami()}")
    return infos


def lock_data_dir(data_dir: Path) -> int:
    """Hold an exclusive lock on data_dir/hub.lock for the life of this process (and its workers); refuse when
    another `hub serve` holds it. Returns the file descriptor (keep it open)."""
    path = data_dir / "hub.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        other = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise ConfigError(f"setting hub.data_dir: {data_dir} is in use by another `hub serve` (pid {other})") \
            from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


@dataclass
class Listeners:
    smtp: list[socket.socket]        # one per worker process, all on the same port (SO_REUSEPORT group)
    http: socket.socket
    locks: list[socket.socket]       # the port locks, held for the life of the supervisor
    smtp_port: int
    http_port: int


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _port_lock(setting: str, listen: str, host: str, port: int) -> socket.socket:
    """A machine-wide lock on host:port: an abstract Unix socket name (per network namespace, like the port; gone
    when the process dies). Two `hub serve` starting at the same instant cannot both pass the probe."""
    lock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        lock.bind(f"\0hub-listen-{host}:{port}")
    except OSError:
        lock.close()
        raise ConfigError(f"setting {setting}: {listen}: address already in use (by another `hub serve`)") \
            from None
    return lock


def _bind(setting: str, listen: str, *, reuse_port: bool, port: int | None = None,
          listen_now: bool = True) -> socket.socket:
    host, configured = split_hostport(listen)
    port = configured if port is None else port
    try:
        family = _family(host)
        # proto IPPROTO_TCP: asyncio sets TCP_NODELAY on accepted sockets only then (pipelined replies would
        # otherwise wait for the client's delayed ACK)
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    except OSError as exc:
        raise ConfigError(f"setting {setting}: {listen}: {exc.strerror}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        if listen_now:
            sock.listen(1024)
    except (OSError, OverflowError) as exc:
        sock.close()
        if isinstance(exc, socket.gaierror):
            why = f"cannot resolve {host!r}"
        elif getattr(exc, "errno", None) == errno.EADDRINUSE:
            why = "address already in use"
        elif getattr(exc, "errno", None) == errno.EACCES:
            why = f"permission denied (ports below 1024 need CAP_NET_BIND_SERVICE; user {_whoami()})"
        elif getattr(exc, "errno", None) == errno.EADDRNOTAVAIL:
            why = "address not available on this machine"
        else:
            why = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(f"setting {setting}: {listen}: {why}") from None
    sock.setblocking(False)
    return sock


def listen_socket(setting: str, listen: str) -> socket.socket:
    """One listening socket (a hub started in-process, without the supervisor); ConfigError if it cannot be bound."""
    return _bind(setting, listen, reuse_port=False)


def bind_listeners(s: Settings, processes: int) -> Listeners:
    """Bind the SMTP and HTTP listening sockets once, in the supervisor, before any worker starts.

    SMTP: one socket per worker in one SO_REUSEPORT group (the kernel spreads connections over the workers), bound
    only after a probe bind *without* SO_REUSEPORT succeeded: any socket already on the address, even another
    hub's SO_REUSEPORT group, makes that probe fail, so a second hub gets "address already in use" instead of
    silently joining. The port lock (`_port_lock`) closes the window between the probe and the group's binds.
    HTTP: one plain socket, served by worker 0."""
    out: list[socket.socket] = []
    locks: list[socket.socket] = []
    try:
        host, port = split_hostport(s.smtp.listen)
        probe = _bind("smtp.listen", s.smtp.listen, reuse_port=False, listen_now=False)
        port = probe.getsockname()[1]          # the real port when 0 was asked for
        locks.append(_port_lock("smtp.listen", s.smtp.listen, host, port))
        probe.close()
        for _ in range(processes):
            out.append(_bind("smtp.listen", s.smtp.listen, reuse_port=True, port=port))
        http = _bind("http.listen", s.http.listen, reuse_port=False)
    except BaseException:
        for sock in out + locks:
            sock.close()
        raise
    return Listeners(smtp=out, http=http, locks=locks, smtp_port=port, http_port=http.getsockname()[1])
