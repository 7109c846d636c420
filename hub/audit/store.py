"""Audit writes. Connection-first functions; the caller owns the transaction, so an event commits (or not) with
the state change it records."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg


@dataclass(frozen=True)
class Event:
    event: str                       # past-tense fact: received, queued, delivery_attempted, delivered, ...
    message_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    account: str | None = None
    sender: str | None = None
    recipient: str | None = None
    patient_key: bytes | None = None
    doc_type: str | None = None
    rule_version: int | None = None


async def record(conn: asyncpg.Connection, *events: Event) -> None:
    """Append events (in order) inside the caller's transaction."""
    if not events:
        return
    await conn.executemany(
        "INSERT INTO audit_event (message_id, event, account, sender, recipient, patient_key, doc_type,"
        " rule_version, facts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [(e.message_id, e.event, e.account, e.sender, e.recipient, e.patient_key, e.doc_type, e.rule_version,
          e.facts) for e in events])


async def timeline(conn: asyncpg.Connection, message_id: str) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM audit_event WHERE message_id = $1 ORDER BY id", message_id)
