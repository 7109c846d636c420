"""Establishment authentication: passwords (scrypt, slow and salted), client-certificate subjects, client networks,
the per-IP failure limiter, and a short-lived cache of verified credentials so a client reconnecting for every
message does not pay the slow hash each time.

Trusts nothing from the client; reads smtp.auth_failures_per_minute.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass

_SCRYPT = {"n": 2 ** 14, "r": 8, "p": 1, "maxmem": 64 * 1024 * 1024, "dklen": 32}


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode("utf-8"), salt=salt, **_SCRYPT)
    return "scrypt$%d$%d$%d$%s$%s" % (_SCRYPT["n"], _SCRYPT["r"], _SCRYPT["p"],
                                       base64.b64encode(salt).decode(), base64.b64encode(dk).decode())


def verify_password(password: str, stored: str | None) -> bool:
    if not stored:
        return False
    try:
        scheme, n, r, p, salt, dk = stored.split("$")
        if scheme != "scrypt":
            return False
        got = hashlib.scrypt(password.encode("utf-8"), salt=base64.b64decode(salt), n=int(n), r=int(r), p=int(p),
                             maxmem=64 * 1024 * 1024, dklen=len(base64.b64decode(dk)))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, base64.b64decode(dk))


@dataclass(frozen=True)
class Account:
    name: str
    password_hash: str | None
    cert_subject: str | None
    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    allow_from: tuple[str, ...]
    fallback_mailbox: str | None
    disabled: bool

    def may_send_as(self, address: str) -> bool:
        """allow_from holds full addresses, `@domain` or bare `domain` (subdomains not included)."""
        address = address.lower()
        domain = address.rpartition("@")[2]
        for allowed in self.allow_from:
            allowed = allowed.lower()
            if allowed == address or allowed.lstrip("@") == domain and "@" not in allowed.lstrip("@"):
                return True
        return False

    def covers(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self.networks)


class FailureLimiter:
    """At most `limit` failures per peer IP in a sliding minute."""

    def __init__(self, limit: int, window: float = 60.0):
        self.limit = limit
        self.window = window
        self._seen: dict[str, deque[float]] = defaultdict(deque)

    def _trim(self, ip: str, now: float) -> deque[float]:
        q = self._seen[ip]
        while q and q[0] < now - self.window:
            q.popleft()
        return q

    def blocked(self, ip: str) -> bool:
        q = self._trim(ip, time.monotonic())
        if not q:
            self._seen.pop(ip, None)
        return len(q) >= self.limit

    def failed(self, ip: str) -> None:
        now = time.monotonic()
        self._trim(ip, now).append(now)


class CredentialCache:
    """Remembers (login, password) pairs verified in the last `ttl` seconds, keyed by an HMAC with a
    process-local random key (the password itself is never kept)."""

    def __init__(self, ttl: float = 300.0):
        self.ttl = ttl
        self._key = secrets.token_bytes(32)
        self._ok: dict[bytes, tuple[float, str]] = {}

    def _k(self, login: str, password: str, stored: str) -> bytes:
        return hmac.new(self._key, b"\0".join(x.encode() for x in (login, password, stored)), "sha256").digest()

    def get(self, login: str, password: str, stored: str) -> bool:
        hit = self._ok.get(self._k(login, password, stored))
        return bool(hit and hit[0] > time.monotonic())

    def put(self, login: str, password: str, stored: str) -> None:
        if len(self._ok) > 10000:
            self._ok.clear()
        self._ok[self._k(login, password, stored)] = (time.monotonic() + self.ttl, login)
