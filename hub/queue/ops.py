"""The operator's queue actions, shared by `hub queue` (hub.queue.cli) and `/api/queue` (hub.web.admin), in the
manner of Postfix's postqueue, postsuper, postcat and qshape.

    list      messages with recipients waiting or dead, and a summary          (postqueue -p, mailq)
    summary   recipients by destination domain and age bucket                   (qshape)
    show      a message, and for each recipient why it waits and what happens next
    hold      operator hold: waiting recipients stop until `release`            (postsuper -h)
    release   held recipients continue (a rule's hold keeps its plan)           (postsuper -H)
    requeue   dead recipients are tried again                                   (postsuper -r)
    delete    a message's waiting recipients are dropped and its body purged    (postsuper -d)
    flush     deferred recipients are due now, optionally for one domain        (postqueue -f / -s)
    view      the message as stored, for an operator                            (postcat)

Recipient states shown: pending (processing stage), queued (first attempt due), deferred (queued after a failed
attempt), active (a delivery is in flight now), held, dead, and the final delivered, bounced, deleted.
Every action that changes something, and every `view`, is an audit event with the actor (`cli:<user>` or
`token:<name>`); `delete` records the body's SHA-256 and the reason, and keeps the audit chain intact (the audit
trail is never rewritten). A message id that does not exist is an UnknownMessage; an action that does not apply
to the message's state is a WrongState (both InputError: exit 2, HTTP 404 / 409).
"""

from __future__ import annotations

import datetime as dt
import hashlib

import asyncpg

from hub.audit.store import Event, record
from hub.errors import InputError

_ORDER = ("processing", "queued", "active", "deferred", "held", "dead")
LIST_STATES = ("processing", "queued", "deferred", "active", "held", "dead", "all")
AGE_BUCKETS = (5, 10, 20, 40, 80, 160, 320, 640, 1280)          # minutes, as qshape
SUMMARY_STATES = ("waiting", "queued", "deferred", "held", "dead", "all")


class UnknownMessage(InputError):
    """No message with this id."""


class WrongState(InputError):
    """The action does not apply to the message as it is now."""


# the display state of a recipient row (alias r), in SQL and in Python
_STATE_SQL = ("CASE WHEN r.state = 'queued' AND r.lease_until > now() THEN 'active'"
              " WHEN r.state = 'queued' AND r.attempts > 0 THEN 'deferred'"
              " WHEN r.state = 'pending' THEN 'processing' ELSE r.state END")
_FILTER = {
    "processing": "r.state = 'pending'",
    "queued": "r.state = 'queued' AND r.attempts = 0 AND (r.lease_until IS NULL OR r.lease_until <= now())",
    "deferred": "r.state = 'queued' AND r.attempts > 0 AND (r.lease_until IS NULL OR r.lease_until <= now())",
    "active": "r.state = 'queued' AND r.lease_until > now()",
    "held": "r.state = 'held'",
    "dead": "r.state = 'dead'",
    "waiting": "r.state IN ('pending', 'queued', 'held')",
    "all": "r.state IN ('pending', 'queued', 'held', 'dead')",
}


async def _message(conn: asyncpg.Connection, message_id: str, *, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM message WHERE id = $1" + (" FOR UPDATE" if lock else ""), message_id)
    if row is None:
        raise UnknownMessage(f"no message {message_id!r} in the queue (a message id is what the hub answered:"
                             " 250 2.0.0 queued as <id>)")
    return row


def _conditions(state: str, domain: str | None, account: str | None) -> tuple[str, list]:
    if state not in _FILTER:
        raise InputError(f"unknown state {state!r}: expected one of {', '.join(LIST_STATES)}")
    where, args = [_FILTER[state]], []
    if domain:
        args.append(domain.lower())
        where.append(f"r.domain = ${len(args)}")
    if account:
        args.append(account)
        where.append(f"m.account = ${len(args)}")
    return " AND ".join(where), args


async def list_messages(conn: asyncpg.Connection, *, state: str = "all", domain: str | None = None,
                        account: str | None = None, limit: int = 100) -> tuple[list[dict], dict]:
    """(messages, summary): the messages having recipients in `state` (oldest first, at most `limit`) and the
    totals of every matching message (not only the listed ones)."""
    where, args = _conditions(state, domain, account)
    rows = await conn.fetch(
        f"SELECT m.id, m.account, m.mail_from, m.size, m.received_at, m.dead_reason,"
        f" array_agg({_STATE_SQL} ORDER BY r.id) AS states, array_agg(r.domain ORDER BY r.id) AS domains,"
        f" (array_agg(r.last_reply ORDER BY r.updated_at DESC) FILTER (WHERE r.last_reply IS NOT NULL))[1]"
        f" AS last_reply"
        f" FROM recipient r JOIN message m ON m.id = r.message_id WHERE {where}"
        f" GROUP BY m.id ORDER BY m.received_at, m.id LIMIT ${len(args) + 1}", *args, limit)
    agg = await conn.fetchrow(
        f"WITH x AS (SELECT r.message_id, r.domain, {_STATE_SQL} AS st FROM recipient r"
        f" JOIN message m ON m.id = r.message_id WHERE {where})"
        f" SELECT (SELECT count(DISTINCT message_id) FROM x) AS messages,"
        f" (SELECT coalesce(sum(size), 0) FROM message WHERE id IN (SELECT message_id FROM x)) AS bytes,"
        f" (SELECT count(DISTINCT domain) FROM x) AS domains,"
        f" (SELECT array_agg(st || '=' || n) FROM (SELECT st, count(*) AS n FROM x GROUP BY st) c) AS recipients",
        *args)
    messages = [{"id": r["id"], "account": r["account"], "mail_from": r["mail_from"], "size": r["size"],
                 "received_at": r["received_at"], "state": _label(r["states"]), "recipients": len(r["states"]),
                 "domains": sorted(set(r["domains"])), "last_reply": r["last_reply"],
                 "dead_reason": r["dead_reason"]} for r in rows]
    counts = dict(item.split("=") for item in agg["recipients"] or [])
    summary = {"messages": agg["messages"], "bytes": agg["bytes"], "domains": agg["domains"],
               "recipients": {st: int(counts[st]) for st in _ORDER if st in counts}}
    return messages, summary


def _label(states: list[str]) -> str:
    seen = list(dict.fromkeys(states))
    return seen[0] if len(seen) == 1 else "+".join(seen)


async def summary(conn: asyncpg.Connection, *, state: str = "waiting") -> dict:
    """qshape: {"buckets": [5, 10, ...], "total": [T, b0, b1, ...], "domains": {domain: [T, b0, ...]}}: recipients
    per destination domain by the age of their message (minutes; the last bucket is older than the last bound)."""
    if state not in SUMMARY_STATES:
        raise InputError(f"unknown state {state!r}: expected one of {', '.join(SUMMARY_STATES)}")
    where, args = _conditions(state, None, None)
    rows = await conn.fetch(
        f"SELECT r.domain, width_bucket(extract(epoch FROM now() - m.received_at) / 60, $1::float8[]) AS b,"
        f" count(*) AS n FROM recipient r JOIN message m ON m.id = r.message_id WHERE {where}"
        f" GROUP BY 1, 2", [float(b) for b in AGE_BUCKETS], *args)
    width = len(AGE_BUCKETS) + 1
    domains: dict[str, list[int]] = {}
    total = [0] * (width + 1)
    for r in rows:
        line = domains.setdefault(r["domain"], [0] * (width + 1))
        line[0] += r["n"]
        line[1 + r["b"]] += r["n"]
        total[0] += r["n"]
        total[1 + r["b"]] += r["n"]
    ordered = dict(sorted(domains.items(), key=lambda kv: (-kv[1][0], kv[0])))
    return {"state": state, "buckets": list(AGE_BUCKETS), "total": total, "domains": ordered}


def _ago(when: dt.datetime, now: dt.datetime) -> str:
    return duration((now - when).total_seconds())


def duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"


def explain(r: asyncpg.Record, message: asyncpg.Record, settings, now: dt.datetime) -> tuple[str, str]:
    """(why, what happens next) for one recipient, in words for the operator."""
    q = settings.queue
    expires = message["received_at"] + dt.timedelta(seconds=q.max_lifetime)
    state = r["state"]
    if state == "queued" and r["lease_until"] is not None and r["lease_until"] > now:
        return ("a delivery attempt is in progress", f"the outcome is recorded when it ends (lease until "
                f"{r['lease_until']:%H:%M:%S})")
    if state == "queued" and r["attempts"] == 0:
        when = "now" if r["next_attempt_at"] <= now else f"at {r['next_attempt_at']:%Y-%m-%d %H:%M:%S %Z}"
        return "waiting for its first delivery attempt", f"delivery {when}"
    if state == "queued":
        left = (r["next_attempt_at"] - now).total_seconds()
        return (f"deferred after {r['attempts']} attempt(s): {r['last_reply'] or 'no reply recorded'}",
                f"next attempt {'now' if left <= 0 else 'in ' + duration(left)} "
                f"({r['next_attempt_at']:%Y-%m-%d %H:%M:%S %Z}); if it still fails after "
                f"{expires:%Y-%m-%d %H:%M %Z} (queue.max_lifetime) it bounces and the sender is notified; "
                "`hub queue flush` retries now")
    if state == "pending":
        return ("waiting for the processing stage (transformation or header edits of rule "
                f"{r['rule_id'] or '?'})", "processed within seconds, then queued for delivery")
    if state == "held":
        if r["hold_reason"]:
            why = r["hold_reason"]
        elif (r["last_reply"] or "").startswith("held:"):
            why = r["last_reply"]
        else:
            why = f"held by routing rule {r['rule_id'] or '?'} (the reason is in `hub audit timeline`)"
        return why, ("stays held until an operator acts: `hub queue release ID` to deliver it"
                     + (" (the original is sent: the transformation failed)" if r["plan"] is None
                        and (r["last_reply"] or "").startswith("held: transformation") else "")
                     + ", `hub queue delete ID --reason ...` to drop it")
    if state == "dead":
        stage = message["dead_stage"] or "delivery"
        return (f"dead at the {stage} stage: {r['last_reply'] or message['dead_reason'] or 'no reason recorded'}",
                "never retried automatically; `hub queue requeue ID` tries again once the cause is fixed")
    if state == "delivered":
        return f"delivered: {r['last_reply'] or ''}".strip(), "nothing: final"
    if state == "bounced":
        return f"bounced: {r['last_reply'] or ''}".strip(), "nothing: final (the sender was notified if asked)"
    if state == "deleted":
        return f"deleted: {message['deleted_reason'] or ''}".strip(), "nothing: final"
    return state, ""


async def show(conn: asyncpg.Connection, message_id: str, settings) -> dict:
    m = await _message(conn, message_id)
    now = await conn.fetchval("SELECT now()")
    rows = await conn.fetch("SELECT * FROM recipient WHERE message_id = $1 ORDER BY id", message_id)
    recipients = []
    for r in rows:
        why, nxt = explain(r, m, settings, now)
        recipients.append({"address": r["address"], "rcpt": r["rcpt"], "domain": r["domain"],
                           "state": _display(r, now), "attempts": r["attempts"], "last_reply": r["last_reply"],
                           "next_attempt_at": r["next_attempt_at"] if r["state"] == "queued" else None,
                           "why": why, "next": nxt})
    return {"id": m["id"], "state": m["state"], "account": m["account"], "mail_from": m["mail_from"],
            "size": m["size"], "received_at": m["received_at"], "age": _ago(m["received_at"], now),
            "peer": m["peer"], "rule_version": m["rule_version"],
            "body": "purged" if m["body"] is None else "stored",
            "body_purged_at": m["body_purged_at"], "dead_reason": m["dead_reason"],
            "deleted_reason": m["deleted_reason"], "recipients": recipients}


def _display(r, now) -> str:
    if r["state"] == "queued" and r["lease_until"] is not None and r["lease_until"] > now:
        return "active"
    if r["state"] == "queued" and r["attempts"] > 0:
        return "deferred"
    return "processing" if r["state"] == "pending" else r["state"]


async def _audit(conn, event: str, message_id: str | None, actor: str, **facts) -> None:
    await record(conn, Event(event, message_id=message_id, actor=actor, facts=facts))


async def hold(conn: asyncpg.Connection, message_id: str, actor: str, reason: str = "") -> int:
    """Hold every waiting (pending or queued) recipient: no delivery until `release`."""
    async with conn.transaction():
        m = await _message(conn, message_id, lock=True)
        text = f"held by operator {actor}" + (f": {reason}" if reason else "")
        n = await conn.fetchval(
            "WITH h AS (UPDATE recipient SET state = 'held', hold_reason = $2, updated_at = now()"
            " WHERE message_id = $1 AND state IN ('pending', 'queued') RETURNING 1) SELECT count(*) FROM h",
            message_id, text)
        if not n:
            raise WrongState(f"message {message_id} has no recipient waiting for delivery (it is {m['state']})")
        await conn.execute("UPDATE message SET state = 'held', lease_until = NULL WHERE id = $1", message_id)
        await _audit(conn, "held", message_id, actor, reason=f"operator: {reason}" if reason else "operator",
                     recipients=n)
    return n


async def release(conn: asyncpg.Connection, message_id: str, actor: str) -> int:
    """Held recipients continue: a rule's hold keeps its plan (transform, header edits) and goes through
    processing; an operator hold or a hold after a failed transformation has no plan left: delivery."""
    async with conn.transaction():
        m = await _message(conn, message_id, lock=True)
        released = await conn.fetch(
            "UPDATE recipient SET state = CASE WHEN plan IS NULL THEN 'queued' ELSE 'pending' END,"
            " hold_reason = NULL, next_attempt_at = now(), updated_at = now()"
            " WHERE message_id = $1 AND state = 'held' RETURNING state", message_id)
        if not released:
            raise WrongState(f"message {message_id} has no held recipient (it is {m['state']})")
        pending = any(r["state"] == "pending" for r in released)
        await conn.execute("UPDATE message SET state = $2, lease_until = NULL WHERE id = $1",
                           message_id, "processing" if pending else "queued")
        await _audit(conn, "released", message_id, actor, recipients=len(released))
        await conn.execute("NOTIFY hub_queue")
    return len(released)


async def requeue(conn: asyncpg.Connection, message_id: str, actor: str) -> int:
    """Dead recipients are queued for delivery again (attempts and crash recoveries start over)."""
    async with conn.transaction():
        m = await _message(conn, message_id, lock=True)
        if m["body"] is None:
            raise WrongState(f"message {message_id} has no body any more (purged): it cannot be sent again")
        n = await conn.fetchval(
            "WITH q AS (UPDATE recipient SET state = 'queued', next_attempt_at = now(), recoveries = 0,"
            " attempts = 0, lease_until = NULL, updated_at = now() WHERE message_id = $1 AND state = 'dead'"
            " RETURNING 1) SELECT count(*) FROM q", message_id)
        if not n:
            raise WrongState(f"message {message_id} has no dead recipient (it is {m['state']})")
        await conn.execute("UPDATE message SET state = 'queued', dead_reason = NULL, dead_stage = NULL,"
                           " finished_at = NULL, lease_until = NULL WHERE id = $1", message_id)
        await _audit(conn, "requeued", message_id, actor, recipients=n)
        await conn.execute("NOTIFY hub_queue")
    return n


async def delete(conn: asyncpg.Connection, message_id: str, actor: str, reason: str) -> int:
    """Drop a message: its waiting and dead recipients become `deleted` (no delivery, no notification) and its
    body and transformed variants are purged at once. Audited with the reason and the body's SHA-256, so the
    trail still says what was removed (the chain is untouched: `hub audit verify` still passes)."""
    reason = (reason or "").strip()
    if not reason:
        raise InputError("say why the message is deleted (--reason): it is recorded in the audit trail")
    async with conn.transaction():
        m = await _message(conn, message_id, lock=True)
        if m["state"] == "deleted":
            raise WrongState(f"message {message_id} was deleted already ({m['deleted_reason']})")
        n = await conn.fetchval(
            "WITH d AS (UPDATE recipient SET state = 'deleted', lease_until = NULL, updated_at = now(),"
            " last_reply = $2 WHERE message_id = $1 AND state IN ('pending', 'queued', 'held', 'dead')"
            " RETURNING 1) SELECT count(*) FROM d", message_id, f"deleted by {actor}")
        digest = hashlib.sha256(m["body"]).hexdigest() if m["body"] is not None else None
        await conn.execute("UPDATE message SET state = 'deleted', deleted_reason = $2, body = NULL,"
                           " body_purged_at = coalesce(body_purged_at, now()), lease_until = NULL,"
                           " finished_at = coalesce(finished_at, now()) WHERE id = $1",
                           message_id, f"{reason} (by {actor})")
        await conn.execute("UPDATE message_variant SET body = NULL WHERE message_id = $1", message_id)
        await _audit(conn, "deleted", message_id, actor, reason=reason, recipients=n, body_sha256=digest,
                     size=m["size"])
    return n


async def flush(conn: asyncpg.Connection, actor: str, domain: str | None = None) -> int:
    """Every deferred recipient (or those of one destination domain) is due now."""
    async with conn.transaction():
        args: list = []
        extra = ""
        if domain:
            args.append(domain.lower())
            extra = " AND domain = $1"
        n = await conn.fetchval(
            "WITH f AS (UPDATE recipient SET next_attempt_at = now() WHERE state = 'queued'"
            f" AND next_attempt_at > now(){extra} RETURNING 1) SELECT count(*) FROM f", *args)
        await _audit(conn, "flushed", None, actor, domain=domain, recipients=n)
        await conn.execute("NOTIFY hub_queue")
    return n


async def view(conn: asyncpg.Connection, message_id: str, actor: str) -> bytes:
    """The message as stored (the received body, with the hub's Received header); the access is audited."""
    async with conn.transaction():
        m = await _message(conn, message_id)
        if m["body"] is None:
            when = f" on {m['body_purged_at']:%Y-%m-%d}" if m["body_purged_at"] else ""
            raise WrongState(f"the body of message {message_id} was purged{when}"
                             + (f" ({m['deleted_reason']})" if m["deleted_reason"] else " (retention)"))
        await _audit(conn, "viewed", message_id, actor, size=m["size"])
    return bytes(m["body"])
