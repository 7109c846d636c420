"""The establishments' accounts as each hub process sees them: loaded from PostgreSQL, refreshed every few
seconds, so login and relay checks never wait on the database."""

from __future__ import annotations

import re
import time

import asyncpg

from hub.intake import store
from hub.intake.auth import Account

_RDN_SPLIT = re.compile(r"(?<!\\),")
_COVERING_CACHE = 4096                # peer addresses whose network-bound accounts are remembered


def dn_key(dn: str) -> frozenset[tuple[str, str]]:
    """Order-insensitive form of an RFC 4514 DN for comparison (`CN=a,O=b` equals `O=b, CN=a`)."""
    out = set()
    for part in _RDN_SPLIT.split(dn or ""):
        k, _, v = part.partition("=")
        if k.strip():
            out.add((k.strip().upper(), " ".join(v.split()).lower()))
    return frozenset(out)


class AccountBook:
    def __init__(self, refresh: float = 5.0):
        self.refresh = refresh
        self._by_name: dict[str, Account] = {}
        self._by_dn: dict[frozenset, Account] = {}
        self._networked: list[Account] = []
        self._covering: dict[str, tuple[Account, ...]] = {}
        self._loaded = 0.0

    def replace(self, accounts: list[Account]) -> None:
        active = [a for a in accounts if not a.disabled]
        self._by_name = {a.name: a for a in active}
        self._by_dn = {dn_key(a.cert_subject): a for a in active if a.cert_subject}
        self._networked = [a for a in active if a.networks]
        self._covering = {}                   # what the old accounts covered is no longer true
        self._loaded = time.monotonic()

    async def load(self, conn: asyncpg.Connection) -> None:
        self.replace(await store.all_accounts(conn))

    async def maybe_refresh(self, pool: asyncpg.Pool) -> None:
        if time.monotonic() - self._loaded >= self.refresh:
            self._loaded = time.monotonic()
            async with pool.acquire() as conn:
                await self.load(conn)

    def is_active(self, name: str) -> bool:
        return name in self._by_name

    def by_name(self, name: str) -> Account | None:
        return self._by_name.get(name)

    def by_subject(self, dn: str) -> Account | None:
        return self._by_dn.get(dn_key(dn))

    def covering(self, ip: str) -> tuple[Account, ...]:
        """The network-bound accounts whose networks hold this peer address, in load order. Found once per address
        until the accounts are next loaded (every MAIL of every session asks; the address was parsed and every
        network-bound account's networks tested each time); at most _COVERING_CACHE addresses are kept."""
        found = self._covering.get(ip)
        if found is None:
            found = tuple(a for a in self._networked if a.covers(ip))
            if len(self._covering) >= _COVERING_CACHE:
                self._covering.clear()
            self._covering[ip] = found
        return found

    def by_network(self, ip: str, mail_from: str) -> tuple[Account | None, bool]:
        """(account, allowed): the network-bound account for this peer that may use mail_from, or the first
        network-bound account covering the peer with allowed=False."""
        first = None
        for a in self.covering(ip):
            if a.may_send_as(mail_from) or not a.allow_from:
                return a, True
            first = first or a
        return first, False

    def covers(self, ip: str) -> bool:
        return bool(self.covering(ip))
