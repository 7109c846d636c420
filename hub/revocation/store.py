"""SQL for the CRL cache (table `crl`). Connection-first; the caller owns the transaction."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def ensure(conn: asyncpg.Connection, urls: list[str], *, configured: bool, hold: float = 0.0) -> None:
    """Rows for `urls` (new ones are due at once, or in `hold` seconds when the caller fetches them itself)."""
    await conn.execute(
        "INSERT INTO crl (url, configured, next_fetch_at) SELECT u, $2, now() + make_interval(secs => $3)"
        " FROM unnest($1::text[]) AS u ON CONFLICT (url) DO UPDATE SET configured = crl.configured OR $2",
        urls, configured, hold)


async def claim_due(conn: asyncpg.Connection, limit: int, lease: float) -> list[asyncpg.Record]:
    """Due URLs, claimed for `lease` seconds (another process skips them)."""
    return await conn.fetch(
        "UPDATE crl SET next_fetch_at = now() + make_interval(secs => $2) WHERE url IN ("
        " SELECT url FROM crl WHERE next_fetch_at <= now() ORDER BY next_fetch_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " RETURNING url, sha256, last_error, fetched_at", limit, lease)


async def store_good(conn: asyncpg.Connection, url: str, der: bytes, sha256: str, issuer: str,
                     this_update: datetime, next_update: datetime | None, entries: int,
                     next_fetch_at: datetime) -> bool:
    """The CRL fetched from `url`; True when its content changed."""
    old = await conn.fetchval("SELECT sha256 FROM crl WHERE url = $1 FOR UPDATE", url)
    await conn.execute(
        "UPDATE crl SET der = $2, sha256 = $3, issuer = $4, this_update = $5, next_update = $6, entries = $7,"
        " fetched_at = now(), last_error = NULL, last_error_at = NULL, next_fetch_at = $8 WHERE url = $1",
        url, der, sha256, issuer, this_update, next_update, entries, next_fetch_at)
    return old != sha256


async def store_failure(conn: asyncpg.Connection, url: str, error: str, next_fetch_at: datetime) -> bool:
    """A failed fetch; True when the URL was fine before (the first failure of a run)."""
    before = await conn.fetchval("SELECT last_error FROM crl WHERE url = $1 FOR UPDATE", url)
    await conn.execute("UPDATE crl SET last_error = $2, last_error_at = now(), next_fetch_at = $3 WHERE url = $1",
                       url, error, next_fetch_at)
    return before is None


async def states(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT url, configured, sha256, last_error FROM crl")


async def ders(conn: asyncpg.Connection, urls: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT url, der, sha256, last_error, configured FROM crl WHERE url = ANY($1)", urls)


async def all_rows(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT url, configured, issuer, this_update, next_update, entries, fetched_at,"
                            " last_error, last_error_at, next_fetch_at FROM crl ORDER BY url")


async def make_due(conn: asyncpg.Connection) -> None:
    await conn.execute("UPDATE crl SET next_fetch_at = now()")
