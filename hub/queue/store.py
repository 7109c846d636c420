"""Queue SQL: claim due recipients with FOR UPDATE SKIP LOCKED and a lease, record outcomes, repair.

A claimed row gets `lease_until`; a worker that dies leaves it to expire, and the row is claimed again (that is
the at-least-once window: a message delivered but not yet recorded when the worker died is sent again).
A row recovered more than queue.max_recoveries times goes to `dead` (poison protection)."""

from __future__ import annotations


import asyncpg


CLAIM = """
WITH due AS (
    SELECT id FROM recipient
    WHERE state = 'queued' AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now())
    ORDER BY priority DESC, next_attempt_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
), claimed AS (
    UPDATE recipient r
    SET lease_until = now() + make_interval(secs => $2), lease_owner = $3,
        recoveries = r.recoveries + (r.lease_until IS NOT NULL)::int
    FROM due, message m
    WHERE r.id = due.id AND m.id = r.message_id
    RETURNING r.id, r.message_id, r.rcpt, r.address, r.domain, r.attempts, r.notify, r.orcpt,
              r.recoveries, r.delay_notified, r.variant_id,
              m.received_at, m.mail_from, m.envid, m.ret, m.account
), firsts AS (
    SELECT min(id) AS id FROM claimed WHERE variant_id IS NULL GROUP BY message_id
)
SELECT c.*, CASE WHEN c.id IN (SELECT id FROM firsts)
                 THEN (SELECT m.body FROM message m WHERE m.id = c.message_id) END AS body
FROM claimed c
"""
# `body`: the message body, on one row per message delivered as accepted (variant_id NULL), else NULL: the claim
# brings the bodies along instead of a second round trip


async def claim(conn: asyncpg.Connection, limit: int, lease_seconds: int, owner: str) -> list[asyncpg.Record]:
    return await conn.fetch(CLAIM, limit, float(lease_seconds), owner)


