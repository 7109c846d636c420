"""The processing stage: messages the routing rules sent through transformations, header edits or post-DATA
rejections (state `processing`, recipients `pending` with a plan). Claims one message at a time with
FOR UPDATE SKIP LOCKED and a lease, applies each distinct plan once (a message variant), and queues the recipients.

A transformation that cannot produce a valid document is never sent half-right: the plan's `on_invalid` decides
(hold: recipients held for manual release, default; original: send the message untransformed; notify: bounce to
the sender) and the audit trail says which and why. Transforms are CPU work: they run in a thread, off the loop.
One catch-all: anything escaping a message moves it to `dead` with the stage and the error; a message whose lease
expired more than queue.max_recoveries times (a crash while processing it) goes to `dead` too.
Settings read: queue.max_recoveries, delivery.lease_seconds, smtp.hostname.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict

import asyncpg
import structlog

from hub import observability as obs
from hub.audit.store import Event, record
from hub.db import UNAVAILABLE, storable
from hub.delivery.client import Outcome
from hub.delivery.notify import enqueue_notification
from hub.errors import HubError, TemporaryError, TransformError
from hub.pipeline import apply_header_edits

log = structlog.get_logger("hub.processing")

CLAIM = """
WITH one AS (
    SELECT id FROM message
    WHERE state = 'processing' AND (lease_until IS NULL OR lease_until < now())
    ORDER BY received_at LIMIT 1 FOR UPDATE SKIP LOCKED
)
UPDATE message m SET lease_until = now() + make_interval(secs => $1),
                     recoveries = m.recoveries + (m.lease_until IS NOT NULL)::int
FROM one WHERE m.id = one.id
RETURNING m.id, m.account, m.mail_from, m.body, m.recoveries, m.received_at, m.envid, m.ret
"""


class Processor:
    def __init__(self, settings, pool: asyncpg.Pool, registry, *, patient_key=None):
        self.settings = settings
        self.pool = pool
        self.registry = registry
        self.patient_key = patient_key          # callable ins -> bytes (keyed hash), or None
        self.on_queued = None                   # wakes the local delivery worker
        self._wake = asyncio.Event()

    def wake(self, *_a) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                did = await self.process_next()
            except UNAVAILABLE as exc:
                log.warning("processing_unavailable", error=f"{type(exc).__name__}: {exc}")
                did = False
                await asyncio.sleep(2)
            except Exception:
                log.exception("processing_loop_failed")
                did = False
                await asyncio.sleep(2)
            if not did:
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), self.settings.delivery.poll_interval)
                except asyncio.TimeoutError:
                    pass

    async def process_next(self) -> bool:
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(CLAIM, float(self.settings.delivery.lease_seconds))
        if row is None:
            return False
        try:
            if row["recoveries"] > self.settings.queue.max_recoveries:
                raise _Poison(f"recovered {row['recoveries']} times from crashes while processing")
            await self.process(row)
            obs.PROCESSED.labels("ok").inc()
        except UNAVAILABLE:
            raise                                  # lease expires; processed again later
        except Exception as exc:                   # the catch-all at the stage boundary
            log.exception("processing_failed", message_id=row["id"])
            obs.PROCESSED.labels("dead").inc()
            obs.DEAD.labels("processing").inc()
            reason = storable(f"{type(exc).__name__}: {exc}"[:1000])    # may quote the document
            async with self.pool.acquire() as conn:
                async with conn.transaction():
                    await conn.execute(
                        "UPDATE message SET state = 'dead', dead_stage = 'processing', dead_reason = $2,"
                        " lease_until = NULL, finished_at = now() WHERE id = $1", row["id"], reason)
                    await conn.execute("UPDATE recipient SET state = 'dead', last_reply = $2, updated_at = now()"
                                       " WHERE message_id = $1 AND state = 'pending'", row["id"], reason)
                    await record(conn, Event("dead", message_id=row["id"], account=row["account"],
                                             sender=row["mail_from"],
                                             facts={"stage": "processing", "reason": reason}))
        return True

    async def process(self, msg: asyncpg.Record) -> None:
        async with self.pool.acquire() as conn:
            pending = await conn.fetch("SELECT * FROM recipient WHERE message_id = $1 AND state = 'pending'"
                                       " ORDER BY id", msg["id"])
        groups: dict[str, list[asyncpg.Record]] = defaultdict(list)
        for r in pending:
            groups[json.dumps(r["plan"], sort_keys=True)].append(r)
        work = []
        for key, rows in groups.items():
            plan = json.loads(key)
            work.append((plan, rows, await self._apply(msg, plan)))
        async with self.pool.acquire() as conn:
            async with conn.transaction():
                events: list[Event] = []
                for plan, rows, result in work:
                    events += await self._commit_plan(conn, msg, plan, rows, result)
                states = {r["state"] for r in await conn.fetch(
                    "SELECT DISTINCT state FROM recipient WHERE message_id = $1", msg["id"])}
                if states <= {"held"}:
                    new_state = "held"
                elif states <= {"delivered", "bounced", "dead"}:
                    new_state = "done"
                else:
                    new_state = "queued"
                await conn.execute("UPDATE message SET state = $2, lease_until = NULL,"
                                   " finished_at = CASE WHEN $2 = 'done' THEN now() END WHERE id = $1",
                                   msg["id"], new_state)
                await record(conn, *events)
        if self.on_queued is not None:
            self.on_queued()

    async def _apply(self, msg, plan: dict):
        """(body, outcome or error) for a plan: the CPU part, in a thread."""
        if "reject" in plan:
            return None
        body = msg["body"]
        outcome = None
        try:
            if "transform" in plan:
                t = plan["transform"]
                outcome = await asyncio.to_thread(self.registry.apply, t["chain"], body, t.get("params") or {},
                                                  account=msg["account"])
                body = outcome.message
            if "headers" in plan:
                body = apply_header_edits(body, plan["headers"])
        except TransformError as exc:
            return exc
        except TemporaryError:                   # the schematron validators restarting: processed again later
            raise
        except HubError as exc:                  # a parse error in the input document is a failed transform too
            return TransformError(str(exc))
        return body, outcome

    async def _commit_plan(self, conn, msg, plan: dict, rows, result) -> list[Event]:
        ids = [r["id"] for r in rows]
        base = dict(message_id=msg["id"], account=msg["account"], sender=msg["mail_from"])
        hostname = self.settings.smtp.hostname
        items = [({"address": r["address"], "orcpt": r["orcpt"], "mail_from": msg["mail_from"],
                   "envid": msg["envid"], "ret": msg["ret"], "received_at": msg["received_at"],
                   "account": msg["account"]}, None) for r in rows]
        if "reject" in plan:
            reply = plan["reject"]
            await conn.execute("UPDATE recipient SET state = 'bounced', last_reply = $2, updated_at = now()"
                               " WHERE id = ANY($1)", ids, reply)
            events = [Event("bounced", recipient=r["address"], facts={"reply": reply, "stage": "rules"}, **base)
                      for r in rows]
            if msg["mail_from"]:
                events += await enqueue_notification(conn, hostname, "failure", msg["id"],
                                                     [(i, Outcome("permanent", reply)) for i, _ in items])
            return events
        if isinstance(result, TransformError):
            return await self._invalid(conn, msg, plan, rows, result, items)
        body, outcome = result
        variant = await conn.fetchval(
            "INSERT INTO message_variant (message_id, plan, body) VALUES ($1, $2, $3) RETURNING id",
            msg["id"], _plan_summary(plan), body)
        await conn.execute("UPDATE recipient SET state = 'queued', variant_id = $2, plan = NULL,"
                           " next_attempt_at = now(), updated_at = now() WHERE id = ANY($1)", ids, variant)
        events = []
        if outcome is not None:
            key = self.patient_key(outcome.patient_ins) if (self.patient_key and outcome.patient_ins) else None
            events.append(Event("transformed", patient_key=key,
                                doc_type=",".join(outcome.doc_codes) or None, facts={
                                    "chain": plan["transform"]["chain"], "variant": variant,
                                    "recipients": [r["address"] for r in rows],
                                    "steps": [{"name": s.name, "version": s.version, "input_sha256": s.input_sha256,
                                               "output_sha256": s.output_sha256, "validation": s.validation,
                                               "warnings": list(s.warnings)} for s in outcome.steps],
                                    "ins_oid": outcome.patient_ins_oid}, **base))
        if "headers" in plan:
            events.append(Event("headers_edited", facts={"variant": variant, "edits": plan["headers"]}, **base))
        return events

    async def _invalid(self, conn, msg, plan, rows, exc: TransformError, items) -> list[Event]:
        ids = [r["id"] for r in rows]
        choice = plan.get("on_invalid") or "hold"
        obs.TRANSFORM_FAILED.labels(plan.get("transform", {}).get("chain") or "-", choice).inc()
        reason = storable(str(exc)[:500])                 # a parser's reason may quote the document
        base = dict(message_id=msg["id"], account=msg["account"], sender=msg["mail_from"])
        steps = [{"name": s.name, "version": s.version, "input_sha256": s.input_sha256,
                  "validation": s.validation} for s in getattr(exc, "steps", []) or []]
        events = [Event("transform_failed", facts={"chain": plan.get("transform", {}).get("chain"),
                                                   "reason": reason, "decision": choice, "steps": steps,
                                                   "recipients": [r["address"] for r in rows]}, **base)]
        if choice == "original":
            await conn.execute("UPDATE recipient SET state = 'queued', plan = NULL, next_attempt_at = now(),"
                               " updated_at = now() WHERE id = ANY($1)", ids)
        elif choice == "notify":
            reply = f"554 5.6.0 the document could not be transformed: {reason}"
            await conn.execute("UPDATE recipient SET state = 'bounced', last_reply = $2, updated_at = now()"
                               " WHERE id = ANY($1)", ids, reply)
            if msg["mail_from"]:
                events += await enqueue_notification(conn, self.settings.smtp.hostname, "failure", msg["id"],
                                                     [(i, Outcome("permanent", reply)) for i, _ in items])
        else:
            await conn.execute("UPDATE recipient SET state = 'held', plan = NULL, last_reply = $2,"
                               " updated_at = now() WHERE id = ANY($1)", ids, f"held: transformation failed: {reason}")
            events.append(Event("held", facts={"reason": f"transformation failed: {reason}"}, **base))
        return events


class _Poison(Exception):
    pass


def _plan_summary(plan: dict) -> str:
    parts = []
    if "transform" in plan:
        parts.append(f"transform {plan['transform']['chain']}")
    if "headers" in plan:
        h = plan["headers"]
        parts.append("headers " + ",".join(n for n, _ in h.get("set", []) + h.get("add", [])) +
                     ("" if not h.get("remove") else " -" + ",".join(h["remove"])))
    return "; ".join(parts) or "as received"
