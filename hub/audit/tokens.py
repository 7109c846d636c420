"""Bearer tokens for the HTTP API and the auditor pages.

A token is `hub_` + 43 url-safe characters (256 random bits); only its SHA-256 is stored (table api_token), so a
token is shown once, at creation. Roles: `auditor` reads the audit trail (optionally scoped to one establishment's
account), `operator` reads the admin endpoints; neither role reads the other's endpoints (separation of duties).
Creating and revoking tokens is audited (`token_created`, `token_revoked`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

from hub.audit.store import Event, record
from hub.errors import InputError

ROLES = ("auditor", "operator")
PREFIX = "hub_"


@dataclass(frozen=True)
class Token:
    id: int
    name: str
    role: str
    account: str | None
    created_at: dt.datetime
    revoked_at: dt.datetime | None = None


def token_hash(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


async def create(conn: asyncpg.Connection, name: str, role: str, account: str | None = None, *,
                 actor: str) -> tuple[Token, str]:
    """Create a token; return it and its secret value (shown once)."""
    if role not in ROLES:
        raise InputError(f"role: expected one of {', '.join(ROLES)}")
    if not name or len(name) > 100:
        raise InputError("token name: 1 to 100 characters")
    if account and role != "auditor":
        raise InputError("--account scopes auditor tokens only")
    secret = PREFIX + secrets.token_urlsafe(32)
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO api_token (name, role, account, token_hash) VALUES ($1, $2, $3, $4)"
                " RETURNING id, name, role, account, created_at, revoked_at", name, role, account, token_hash(secret))
        except asyncpg.UniqueViolationError:
            raise InputError(f"a token named {name!r} exists already") from None
        await record(conn, Event("token_created", actor=actor, account=account,
                                 facts={"token": name, "role": role}))
    return Token(**dict(row)), secret


async def list_tokens(conn: asyncpg.Connection) -> list[Token]:
    rows = await conn.fetch("SELECT id, name, role, account, created_at, revoked_at FROM api_token ORDER BY name")
    return [Token(**dict(r)) for r in rows]


async def revoke(conn: asyncpg.Connection, name: str, *, actor: str) -> bool:
    async with conn.transaction():
        done = await conn.fetchval("UPDATE api_token SET revoked_at = now() WHERE name = $1 AND revoked_at IS NULL"
                                   " RETURNING id", name)
        if done:
            await record(conn, Event("token_revoked", actor=actor, facts={"token": name}))
    return bool(done)


async def lookup(conn: asyncpg.Connection, secret: str) -> Token | None:
    """The live token with this secret value, or None."""
    if not secret.startswith(PREFIX) or len(secret) > 200:
        return None
    row = await conn.fetchrow("SELECT id, name, role, account, created_at, revoked_at FROM api_token"
                              " WHERE token_hash = $1 AND revoked_at IS NULL", token_hash(secret))
    return Token(**dict(row)) if row else None
