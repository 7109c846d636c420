"""Audit writes. Connection-first functions; the caller owns the transaction, so an event commits (or not) with
the state change it records.

`record()` appends events unchained: one plain INSERT per event (pipelined), no lock shared with other
transactions, nothing else on the hot path. The single background sealer (hub.audit.chain) later chains the events
and derives the messages' search keys (`audit_message_key`) set-based, in the same transaction, so a message is
searchable once sealed (within audit.seal_interval). Facts must never hold message content: addresses,
identifiers, digests, replies, counts.

Search keys derived per event (SQL function audit_seal_upto): `*` for a `received` event; account, sender,
recipient, every address in facts["recipients"] (the `recipients` field puts them there), patient key, document
type, rule-set version whenever the event carries them. Addresses are keyed in lower case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from hub.db import UNSTORABLE, storable


@dataclass(frozen=True)
class Event:
    event: str                       # past-tense fact: received, routed, delivered (each outcome records its attempt), ...
    message_id: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    account: str | None = None
    sender: str | None = None
    recipient: str | None = None
    patient_key: bytes | None = None
    doc_type: str | None = None
    rule_version: int | None = None
    actor: str | None = None         # who did it (operator, auditor token, "retention") for non-message events
    recipients: tuple[str, ...] = () # all recipients of a `received` event: written to facts, searchable


def _facts(e: Event) -> str:
    facts = dict(e.facts)
    if e.recipients and "recipients" not in facts:
        facts["recipients"] = list(e.recipients)
    text = json.dumps(facts, separators=(",", ":"), ensure_ascii=False, default=str)
    if "\\u0000" in text or (not text.isascii() and UNSTORABLE.search(text)):
        text = json.dumps(_cleaned(json.loads(text)), separators=(",", ":"), ensure_ascii=False)
    return text


def _cleaned(value: Any) -> Any:
    """Facts with NUL and lone surrogates replaced (U+FFFD) in every string, keys included."""
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, dict):
        return {storable(k): _cleaned(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_cleaned(v) for v in value]
    return value


def _text(value: str | None) -> str | None:
    return value if value is None else storable(value)


def _row(e: Event) -> tuple:
    """One event as column values. The boundary for text PostgreSQL cannot store: whatever a caller puts in an
    event (an address, a header value, a parser's warning quoting the document), NUL and undecodable bytes are
    replaced here, so an audit insert never fails on them (and never sends a message to `dead`)."""
    return (_text(e.message_id), e.event, _text(e.account), _text(e.sender), _text(e.recipient), e.patient_key,
            _text(e.doc_type), e.rule_version, _text(e.actor), _facts(e))


_INSERT = ("INSERT INTO audit_event (message_id, event, account, sender, recipient, patient_key, doc_type,"
           " rule_version, actor, facts) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text::jsonb)")


# the events given as one array per column ($1 ... $10, see `columns`), inserted in array order
INSERT_ROWS_FROM = ("INSERT INTO audit_event (message_id, event, account, sender, recipient, patient_key, doc_type,"
                    " rule_version, actor, facts) SELECT message_id, event, account, sender, recipient, patient_key,"
                    " doc_type, rule_version, actor, facts FROM unnest(")
INSERT_ROWS_TAIL = ("::jsonb[]) WITH ORDINALITY AS e(message_id, event, account, sender, recipient, patient_key,"
                    " doc_type, rule_version, actor, facts, n) ORDER BY n")
_INSERT_MANY = (INSERT_ROWS_FROM + "$1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bytea[],"
                " $7::text[], $8::int[], $9::text[], $10::text[]" + INSERT_ROWS_TAIL)


def columns(events) -> list[list]:
    """The events as ten column arrays, for INSERT_ROWS_FROM ... INSERT_ROWS_TAIL (empty arrays for no event)."""
    rows = [_row(e) for e in events]
    return [list(column) for column in zip(*rows)] if rows else [[] for _ in range(10)]


async def record(conn: asyncpg.Connection, *events: Event) -> None:
    """Append events (in order) inside the caller's transaction. Several events go in one statement (one
    execution for all rows: measured cheaper than executemany from two rows on)."""
    if len(events) == 1:
        await conn.execute(_INSERT, *_row(events[0]))
    elif events:
        await conn.execute(_INSERT_MANY, *columns(events))


EVENT_COLUMNS = ("id", "at", "event", "message_id", "account", "sender", "recipient", "patient_key", "doc_type",
                 "rule_version", "actor", "facts")


async def timeline(conn: asyncpg.Connection, message_id: str) -> list[asyncpg.Record]:
    """Every event of one message, in order."""
    return await conn.fetch(f"SELECT {', '.join(EVENT_COLUMNS)} FROM audit_event WHERE message_id = $1 ORDER BY id",
                            message_id)
