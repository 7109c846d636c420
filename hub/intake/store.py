"""SQL for sender accounts and for accepting a message. Connection-first; the caller owns the transaction."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

import asyncpg

from hub.audit import store as audit_store
from hub.audit.store import Event
from hub.intake.auth import Account


def _account(row: asyncpg.Record) -> Account:
    return Account(
        name=row["name"], password_hash=row["password_hash"], cert_subject=row["cert_subject"],
        networks=tuple(ipaddress.ip_network(n, strict=False) for n in row["networks"]),
        allow_from=tuple(row["allow_from"]), fallback_mailbox=row["fallback_mailbox"], disabled=row["disabled"])


async def all_accounts(conn: asyncpg.Connection) -> list[Account]:
    return [_account(r) for r in await conn.fetch("SELECT * FROM account ORDER BY name")]


async def add_account(conn: asyncpg.Connection, name: str, *, password_hash: str | None, cert_subject: str | None,
                      networks: list[str], allow_from: list[str], fallback_mailbox: str | None) -> bool:
    """Create or update; returns True when created."""
    row = await conn.fetchrow(
        "INSERT INTO account (name, password_hash, cert_subject, networks, allow_from, fallback_mailbox)"
        " VALUES ($1, $2, $3, $4::cidr[], $5, $6)"
        " ON CONFLICT (name) DO UPDATE SET"
        "  password_hash = COALESCE(EXCLUDED.password_hash, account.password_hash),"
        "  cert_subject = COALESCE(EXCLUDED.cert_subject, account.cert_subject),"
        "  networks = CASE WHEN cardinality(EXCLUDED.networks) > 0 THEN EXCLUDED.networks ELSE account.networks END,"
        "  allow_from = CASE WHEN cardinality(EXCLUDED.allow_from) > 0 THEN EXCLUDED.allow_from"
        "               ELSE account.allow_from END,"
        "  fallback_mailbox = COALESCE(EXCLUDED.fallback_mailbox, account.fallback_mailbox),"
        "  disabled = false, updated_at = now()"
        " RETURNING (xmax = 0) AS created",
        name, password_hash, cert_subject, networks, allow_from, fallback_mailbox)
    return row["created"]


async def set_disabled(conn: asyncpg.Connection, name: str, disabled: bool) -> bool:
    status = await conn.execute("UPDATE account SET disabled = $2, updated_at = now() WHERE name = $1",
                                name, disabled)
    return status.endswith(" 1")


@dataclass
class NewRecipient:
    rcpt: str
    address: str
    state: str = "queued"            # or "pending" (processing stage), "held"
    notify: str | None = None
    orcpt: str | None = None
    resolution: str | None = None
    plan: dict | None = None         # processing plan for state "pending"
    rule_id: str | None = None
    priority: int = 0
    facts: dict = field(default_factory=dict)   # resolution facts for the audit trail (not stored as such)

    @property
    def domain(self) -> str:
        return self.address.rpartition("@")[2].lower()


@dataclass
class NewMessage:
    id: str
    account: str | None
    mail_from: str
    body: bytes
    recipients: list[NewRecipient]
    state: str = "queued"
    peer: str | None = None
    helo: str | None = None
    tls_version: str | None = None
    envid: str | None = None
    ret: str | None = None
    rule_version: int | None = None
    extra: dict = field(default_factory=dict)


_INSERT_MESSAGE = (
    "INSERT INTO message (id, account, mail_from, state, size, body, peer, helo, tls_version, envid, ret,"
    " rule_version) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) RETURNING received_at")
# $33, $34: the delivery lease taken at intake (owner, seconds), NULL for none
_INSERT_RECIPIENTS = (
    "INSERT INTO recipient (message_id, rcpt, address, domain, state, notify, orcpt, resolution, plan, rule_id,"
    " priority, lease_owner, lease_until) SELECT $1, u.*, $33::text,"
    " now() + make_interval(secs => $34::float8) FROM unnest($13::text[], $14::text[], $15::text[], $16::text[],"
    " $17::text[], $18::text[], $19::text[], $20::jsonb[], $21::text[], $22::int[]) AS u RETURNING id")
# One statement, so accepting a message costs one round trip to PostgreSQL (and, outside a transaction block, its
# own durable commit): the message, its recipients and its audit events are written together or not at all.
_ACCEPT = (f"WITH m AS ({_INSERT_MESSAGE}), r AS ({_INSERT_RECIPIENTS}), a AS ({audit_store.INSERT_ROWS_FROM}"
           "$23::text[], $24::text[], $25::text[], $26::text[], $27::text[], $28::bytea[], $29::text[], $30::int[],"
           " $31::text[], $32::text[]" f"{audit_store.INSERT_ROWS_TAIL})"
           " SELECT (SELECT received_at FROM m) AS received_at, array(SELECT id FROM r ORDER BY id) AS ids")


async def insert_message(conn: asyncpg.Connection, m: NewMessage, events: Sequence[Event] = (), *,
                         lease_owner: str | None = None, lease_seconds: float | None = None) -> asyncpg.Record:
    """Write the message, its recipients and `events` (its audit events, in order) in one statement. Called outside
    a transaction block, that statement is its own transaction: it has committed when this returns.

    With `lease_owner`, the recipients are written already leased by that delivery worker for `lease_seconds` (the
    process that accepted the message delivers it without claiming it from the queue; if it dies, the lease expires
    and any worker takes the recipients, as after a claim). Returns (received_at, ids: the recipients' ids in the
    order of m.recipients)."""
    rs = m.recipients
    return await conn.fetchrow(
        _ACCEPT,
        m.id, m.account, m.mail_from, m.state, len(m.body), m.body, m.peer, m.helo, m.tls_version, m.envid, m.ret,
        m.rule_version,
        [r.rcpt for r in rs], [r.address.lower() for r in rs], [r.domain for r in rs], [r.state for r in rs],
        [r.notify for r in rs], [r.orcpt for r in rs], [r.resolution for r in rs], [r.plan for r in rs],
        [r.rule_id for r in rs], [r.priority for r in rs],
        *audit_store.columns(events), lease_owner, lease_seconds if lease_owner else None)
