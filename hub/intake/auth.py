"""Establishment authentication: passwords (scrypt, slow and salted), client-certificate subjects, client networks,
the per-IP failure limiter (counted in PostgreSQL, for every process and node), and a short-lived cache of
verified credentials so a client reconnecting for every message does not pay the slow hash each time.

Trusts nothing from the client; reads smtp.auth_failures_per_minute.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import ipaddress
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta

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
    """At most `limit` failed AUTH attempts per client address in a sliding `window` (seconds), for the whole hub:
    counted in PostgreSQL (table auth_attempt, functions auth_begin / auth_end), so every process and every node
    sharing the database sees the same count. A password verification holds a slot while it runs, so parallel
    guesses cannot overshoot the limit; when every slot is taken by verifications in progress, a new one waits
    for a free slot (up to `wait` seconds, then "busy"). A login with credentials verified moments ago
    (CredentialCache) guesses nothing: it needs no slot, only the check that the address is not blocked."""

    def __init__(self, pool, limit: int, window: float = 60.0, wait: float = 10.0):
        self.pool = pool
        self.limit = limit
        self.window = timedelta(seconds=window)
        self.wait = wait

    async def begin(self, ip: str, *, verify: bool) -> tuple[str, int]:
        """("ok", slot) — slot 0 when `verify` is false —, ("blocked", 0) or ("busy", 0). Database errors propagate
        (the caller answers a temporary failure)."""
        deadline = time.monotonic() + self.wait
        while True:
            async with self.pool.acquire() as conn:
                slot = await conn.fetchval("SELECT auth_begin($1, $2, $3, $4)", ip, self.limit, self.window, verify)
            if slot < 0:
                return "blocked", 0
            if slot > 0 or not verify:
                return "ok", slot
            if time.monotonic() > deadline:
                return "busy", 0
            await asyncio.sleep(0.05)

    async def end(self, slot: int, ok: bool) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute("SELECT auth_end($1, $2)", slot, ok)


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
