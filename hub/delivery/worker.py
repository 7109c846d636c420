"""The delivery stage: claim due recipients, send each (message, next hop) group in one SMTP transaction over a
reused mutual-TLS connection, and record per-recipient outcomes, audit events and notifications.

Flow per claimed batch (rows leased with SKIP LOCKED, so several processes share one queue):
    poison check (recovered too often -> dead) -> authorised? (trust space or local destination, checked again at
    delivery time: the list may have changed) -> next hop -> transaction -> outcome:
    delivered | temporary (backoff; expiry turns it permanent) | permanent (bounce DSN)
Outcomes are written in small batches by one recorder task (group commit); a crash before the write only means the
recipient is sent again after its lease expires (at-least-once).

One catch-all at the group boundary: an exception escaping a group moves its message to `dead` with the stage and
the error; the worker keeps running.
Settings read: delivery.*, queue.*, smtp.hostname.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime, timezone

import asyncpg
import structlog

from hub import observability as obs
from hub.audit.store import INSERT_ROWS_FROM, INSERT_ROWS_TAIL, Event
from hub.audit.store import columns as audit_columns
from hub.db import UNAVAILABLE
from hub.delivery import dsn
from hub.delivery.client import ClientPool, Outcome, transact
from hub.delivery.notify import enqueue_notification
from hub.delivery.nexthop import NextHops
from hub.errors import PermanentError, TemporaryError
from hub.intake.accounts import dn_key
from hub.queue import store
from hub.queue.schedule import Schedule

log = structlog.get_logger("hub.delivery")
ACQUIRE_TIMEOUT = 10.0
# a deferral or a bounce is a warning for the operator, a dead recipient an error
_LOG_LEVEL = {"delivered": "info", "temporary": "warning", "permanent": "warning", "dead": "error"}


def _record_delivered_sql(one: bool) -> str:
    """Delivered outcomes in one statement: the recipients ($1 ids, $2 replies), the batch's audit events ($4-$13,
    as hub.audit.store.columns), and the messages among $3 whose recipients are now all final. The parts of one
    statement all see the rows as they were before it, so the recipients it marks delivered are excluded from that
    check by id (the other outcomes of the batch, written earlier in the same transaction, are seen).
    one=True: the common batch of one recipient of one message, with plain values instead of arrays, so that
    PostgreSQL keeps one generic plan of index look-ups; with arrays it re-plans at every execution (it
    estimates ten elements), and below ~10,000 rows it may scan whole tables."""
    ids, reply, mids = ("$1::bigint", "$2::text", "$3::text") if one else \
        ("ANY($1::bigint[])", "($2::text[])[array_position($1::bigint[], id)]", "ANY($3::text[])")
    excluded = "r.id <> $1::bigint" if one else "r.id <> ALL($1::bigint[])"
    return (
        f"WITH d AS (UPDATE recipient SET state = 'delivered', attempts = attempts + 1, last_reply = {reply},"
        f" lease_until = NULL, lease_owner = NULL, updated_at = now() WHERE id = {ids}),"
        f" a AS ({INSERT_ROWS_FROM}$4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::bytea[],"
        f" $10::text[], $11::int[], $12::text[], $13::text[]{INSERT_ROWS_TAIL})"
        " UPDATE message m SET state = 'done', finished_at = now()"
        f" WHERE m.id = {mids} AND m.state = 'queued' AND NOT EXISTS ("
        "  SELECT 1 FROM recipient r WHERE r.message_id = m.id AND r.state IN ('pending', 'queued', 'held')"
        f"  AND {excluded})")


_RECORD_DELIVERED = _record_delivered_sql(False)
_RECORD_ONE_DELIVERED = _record_delivered_sql(True)


@dataclass
class Result:
    row: asyncpg.Record
    outcome: Outcome
    hop: str | None
    tls: str | None = None
    peer_subject: str | None = None


class DeliveryWorker:
    def __init__(self, settings, pool: asyncpg.Pool, trust, *, nexthops: NextHops | None = None,
                 clients: ClientPool | None = None, listen_url: str | None = None, revocation=None):
        self.settings = settings
        self.listen_url = listen_url
        self.pool = pool
        self.trust = trust
        self.nexthops = nexthops or NextHops(settings, trust)
        self.clients = clients or ClientPool(settings, revocation)
        self.schedule = Schedule.from_settings(settings.queue)
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        d = settings.delivery
        self._slots = asyncio.Semaphore(d.workers)
        self._per_dest: dict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(d.per_destination_concurrency))
        self._wake = asyncio.Event()
        self._results: asyncio.Queue[list[Result]] = asyncio.Queue()
        self._tasks: set[asyncio.Task] = set()
        self._recording = False              # the recorder runs: outcomes handed to it get written

    def wake(self, *_args) -> None:
        self._wake.set()

    # ---- messages handed over by intake ----------------------------------------------------------------------
    async def reserve(self, msg) -> int:
        """Slots for a message this process is accepting (one per destination domain), taken only when they are
        free now and nobody waits for them; 0 when the message goes through the queue instead (some recipient
        is not ready for delivery, or the worker is busy or stopping)."""
        if not self._recording or any(r.state != "queued" for r in msg.recipients):
            return 0
        n = len({r.domain for r in msg.recipients})
        slots = self._slots
        if n > slots._value or slots.locked():
            return 0
        for _ in range(n):
            await slots.acquire()            # free slots and no waiter: returns without suspending
        return n

    def unreserve(self, n: int) -> None:
        for _ in range(n):
            self._slots.release()

    def hand_over(self, msg, received_at: datetime, ids: list[int], reserved: int) -> None:
        """Deliver a message intake has just committed with its recipients leased to this worker (`reserve`
        gave the slots): the rows the claim would have returned, built from what intake has in memory."""
        if not self._recording:              # stopped meanwhile: the leases expire, any worker sends them
            self.unreserve(reserved)
            return
        groups: dict[str, list[dict]] = defaultdict(list)
        for rid, r in zip(ids, msg.recipients):
            groups[r.domain].append({
                "id": rid, "message_id": msg.id, "rcpt": r.rcpt, "address": r.address.lower(), "domain": r.domain,
                "attempts": 0, "notify": r.notify, "orcpt": r.orcpt, "recoveries": 0, "delay_notified": False,
                "variant_id": None, "received_at": received_at, "mail_from": msg.mail_from, "envid": msg.envid,
                "ret": msg.ret, "account": msg.account})
        for rows in groups.values():
            task = asyncio.create_task(self._run_group(rows, msg.body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        recorder = asyncio.create_task(self._recorder(stop))
        listener = None
        try:
            while not stop.is_set():
                try:
                    if listener is not None and listener.is_closed():
                        listener = await self._drop(listener)
                    if listener is None:
                        listener = await self._listen()
                    n = await self.fill()
                except UNAVAILABLE as exc:
                    log.warning("queue_unavailable", error=f"{type(exc).__name__}: {exc}")
                    listener = await self._drop(listener)
                    await _wait(stop, 2.0)
                    continue
                except Exception:      # a bug must not stop deliveries: log, pause, carry on
                    log.exception("delivery_loop_failed")
                    listener = await self._drop(listener)
                    await _wait(stop, 2.0)
                    continue
                if n == 0:
                    self._wake.clear()
                    await _wait_any(stop, self._wake, self.settings.delivery.poll_interval)
        finally:
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=30)
            stop.set()
            await recorder
            await self._drop(listener)
            await self.clients.close_all()

    async def _listen(self):
        """A dedicated connection LISTENing on hub_queue, so new mail is sent at once (polling is the fallback)."""
        if not self.listen_url:
            return None
        conn = None
        try:
            conn = await asyncpg.connect(self.listen_url, timeout=ACQUIRE_TIMEOUT)
            await conn.add_listener("hub_queue", self.wake)
            return conn
        except Exception as exc:       # no listener: polling still works
            log.warning("queue_listen_failed", error=f"{type(exc).__name__}: {exc}")
            await self._drop(conn)
            return None

    async def _drop(self, conn):
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:           # a broken connection: make sure it is gone
                conn.terminate()
        return None

    async def fill(self) -> int:
        """Claim as many due recipients as there are free slots and start their groups; returns rows claimed."""
        free = self._slots._value
        if free <= 0:
            await self._slots.acquire()
            self._slots.release()
            return 1
        # no more rows than free slots: a leased row never waits for a slot (its lease could expire meanwhile and
        # another worker send it too)
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            rows = await store.claim(conn, min(self.settings.delivery.batch_size, free),
                                     self.settings.delivery.lease_seconds, self.owner)
        bodies = {r["message_id"]: r["body"] for r in rows if r["body"] is not None}
        groups: dict[tuple, list[asyncpg.Record]] = defaultdict(list)
        for r in rows:
            groups[(r["message_id"], r["domain"], r["variant_id"])].append(r)
        for rows_ in groups.values():
            await self._slots.acquire()
            body = bodies.get(rows_[0]["message_id"]) if rows_[0]["variant_id"] is None else None
            task = asyncio.create_task(self._run_group(rows_, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return len(rows)

    async def _run_group(self, rows: list[asyncpg.Record], body: bytes | None) -> None:
        try:
            results = await self.deliver_group(rows, body)
            self._results.put_nowait(results)
        except (TemporaryError, *UNAVAILABLE) as exc:
            # not the message's fault (database or local trouble): try again soon, without counting an attempt
            log.warning("delivery_postponed", message_id=rows[0]["message_id"], error=f"{type(exc).__name__}: {exc}")
            self._results.put_nowait([Result(r, Outcome("retry", f"4.3.0 postponed: {type(exc).__name__}"), None)
                                      for r in rows])
        except Exception as exc:     # the catch-all at the stage boundary
            log.exception("delivery_crashed", message_id=rows[0]["message_id"])
            self._results.put_nowait([Result(r, Outcome("dead", f"delivery stage: {type(exc).__name__}: {exc}"),
                                             None) for r in rows])
        finally:
            self._slots.release()

    async def deliver_group(self, rows: list[asyncpg.Record], body: bytes | None = None) -> list[Result]:
        first = rows[0]
        domain = first["domain"]
        limit = self.settings.queue.max_recoveries
        poisoned = [r for r in rows if r["recoveries"] > limit]
        if poisoned:
            return [Result(r, Outcome("dead", f"recovered {r['recoveries']} times from crashed deliveries"), None)
                    for r in rows]
        if not self.trust.delivers_to(domain):
            o = Outcome("permanent", f"550 5.7.1 {domain} is no longer in the MSSanté trust space")
            return [Result(r, o, None) for r in rows]
        if body is None:
            async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
                if first["variant_id"] is not None:
                    body = await conn.fetchval("SELECT body FROM message_variant WHERE id = $1",
                                               first["variant_id"])
                else:
                    body = await conn.fetchval("SELECT body FROM message WHERE id = $1", first["message_id"])
        if body is None:
            return [Result(r, Outcome("dead", "message body missing"), None) for r in rows]
        try:
            hops = await self.nexthops.lookup(domain)
        except TemporaryError as exc:
            return [Result(r, Outcome("temporary", str(exc)), None) for r in rows]
        except PermanentError as exc:
            return [Result(r, Outcome("permanent", f"550 {exc}"), None) for r in rows]
        last_error, last_hop = "no next hop", None
        for hop in hops:
            last_hop = hop.key
            async with self._per_dest[hop.key]:
                started = time.perf_counter()
                try:
                    conn = await self.clients.acquire(hop)
                except TemporaryError as exc:
                    last_error = str(exc)
                    continue
                refusal = await self.clients.revocation_refusal(conn) if self.trust.is_trusted(domain) else None
                if refusal is not None:                  # revoked, or status unknown (revocation.unavailable)
                    self.clients.release(conn, False)
                    last_error = refusal
                    continue
                if self.settings.delivery.strict_operator_dn and self.trust.is_trusted(domain):
                    listed = {dn_key(d) for d in self.trust.operator_dns(domain)}
                    if dn_key(conn.peer_subject or "") not in listed:
                        self.clients.release(conn, False)
                        last_error = (f"4.7.5 {hop.key} certificate subject {conn.peer_subject!r} is not listed for"
                                      f" {domain} in the authorised-domains list")
                        continue
                outcomes, reusable = await transact(
                    conn, first["mail_from"], [(r["id"], r["address"], r["notify"], r["orcpt"]) for r in rows],
                    body, ret=first["ret"], envid=first["envid"])
                self.clients.release(conn, reusable)
                obs.DELIVERY_SECONDS.observe(time.perf_counter() - started)
                return [Result(r, outcomes[r["id"]], hop.key, conn.tls_version, conn.peer_subject) for r in rows]
        return [Result(r, Outcome("temporary", last_error), last_hop) for r in rows]

    # ---- recording -------------------------------------------------------------------------------------------
    async def _recorder(self, stop: asyncio.Event) -> None:
        self._recording = True
        try:
            await self._record_loop(stop)
        finally:
            self._recording = False

    async def _record_loop(self, stop: asyncio.Event) -> None:
        while True:
            if stop.is_set() and self._results.empty() and not self._tasks:
                return
            try:
                batch = await asyncio.wait_for(self._results.get(), 0.5)
            except asyncio.TimeoutError:
                continue
            while not self._results.empty() and len(batch) < 500:
                batch.extend(self._results.get_nowait())
            for attempt in range(5):
                try:
                    await self.record(batch)
                    break
                except UNAVAILABLE as exc:
                    log.warning("outcome_record_failed", error=str(exc), attempt=attempt)
                    await asyncio.sleep(1 + attempt)
                except Exception:     # a bug or a value the database refuses: this batch only, never the recorder
                    log.exception("outcome_record_failed", recipients=len(batch))
                    break
            # if it never succeeded, the leases expire and the recipients are tried again (at-least-once; a
            # recipient recovered too often goes to dead)

    async def record(self, results: list[Result]) -> None:
        now = datetime.now(timezone.utc)
        events: list[Event] = []
        delivered: list[int] = []
        bounces: dict[str, list[tuple[asyncpg.Record, Outcome]]] = defaultdict(list)
        delays: dict[str, list[tuple[asyncpg.Record, Outcome]]] = defaultdict(list)
        successes: dict[str, list[tuple[asyncpg.Record, Outcome]]] = defaultdict(list)
        deferred: list[tuple] = []
        finals: list[tuple] = []
        dead_messages: dict[str, str] = {}
        retry: list[int] = []
        replies: dict[int, str] = {}
        logged: list[tuple] = []
        for res in results:
            r, o = res.row, res.outcome
            if o.kind == "retry":
                retry.append(r["id"])
                continue
            base = dict(message_id=r["message_id"], account=r["account"], sender=r["mail_from"],
                        recipient=r["address"])
            # each outcome event is the record of the attempt that produced it (one event, not two)
            attempt = {"attempt": r["attempts"] + 1, "next_hop": res.hop, "tls": res.tls,
                       "peer_certificate": res.peer_subject} if res.hop else {"attempt": r["attempts"] + 1}
            kind = o.kind
            if kind == "temporary" and self.schedule.expired(r["received_at"], now):
                kind, o = "permanent", Outcome("permanent", f"{o.reply} (gave up after "
                                                            f"{self.settings.queue.max_lifetime // 3600} h)")
            logged.append((kind, r, res.hop, o.reply))
            if kind == "delivered":
                delivered.append(r["id"])
                replies[r["id"]] = o.reply
                events.append(Event("delivered", facts={**attempt, "reply": o.reply}, **base))
                if dsn.wants("success", r["notify"], r["mail_from"]) and "SUCCESS" in (r["notify"] or ""):
                    successes[r["message_id"]].append((r, o))
            elif kind == "temporary":
                notice = (not r["delay_notified"]) and self.schedule.owes_delay_notice(r["received_at"], now) \
                    and dsn.wants("delay", r["notify"], r["mail_from"])
                nxt = self.schedule.next_attempt(r["attempts"] + 1, now)
                deferred.append((r["id"], o.reply, nxt, r["delay_notified"] or notice))
                events.append(Event("deferred", facts={**attempt, "reply": o.reply,
                                                       "next_attempt_at": nxt.isoformat()}, **base))
                if notice:
                    delays[r["message_id"]].append((r, o))
            elif kind == "permanent":
                finals.append((r["id"], "bounced", o.reply))
                events.append(Event("bounced", facts={**attempt, "reply": o.reply}, **base))
                if dsn.wants("failure", r["notify"], r["mail_from"]):
                    bounces[r["message_id"]].append((r, o))
            else:   # dead
                finals.append((r["id"], "dead", o.reply))
                dead_messages[r["message_id"]] = o.reply
                events.append(Event("dead", facts={"stage": "delivery", "reason": o.reply}, **base))
                obs.DEAD.labels("delivery").inc()
        notices = [(kind, groups) for kind, groups in (("failure", bounces), ("delay", delays),
                                                        ("success", successes)) if groups]
        messages = list({res.row["message_id"] for res in results})
        async with self.pool.acquire(timeout=ACQUIRE_TIMEOUT) as conn:
            if retry or deferred or finals or notices:
                async with conn.transaction():
                    await self._record_others(conn, events, deferred, finals, retry, dead_messages, notices)
                    await self._record_delivered(conn, delivered, replies, messages, events)
            else:       # the common case: one statement, one round trip, its own commit
                await self._record_delivered(conn, delivered, replies, messages, events)
        for kind, r, hop, reply in logged:          # once the outcomes are written
            obs.delivery_outcome(r["domain"], kind)
            getattr(log, _LOG_LEVEL[kind])(f"delivery_{kind}", message_id=r["message_id"], domain=r["domain"],
                                           next_hop=hop, reply=reply)

    @staticmethod
    async def _record_delivered(conn, delivered: list[int], replies: dict[int, str], messages: list[str],
                                events: list[Event]) -> None:
        """The delivered recipients, every audit event of the batch, and the messages now done: one statement."""
        if len(delivered) == 1 and len(messages) == 1:
            await conn.execute(_RECORD_ONE_DELIVERED, delivered[0], replies[delivered[0]], messages[0],
                               *audit_columns(events))
        else:
            await conn.execute(_RECORD_DELIVERED, delivered, [replies[i] for i in delivered], messages,
                               *audit_columns(events))

    async def _record_others(self, conn, events, deferred, finals, retry, dead_messages, notices) -> None:
        """Outcomes other than delivered, and notifications (their events are appended to `events`)."""
        if retry:
            await conn.execute(
                "UPDATE recipient SET lease_until = NULL, lease_owner = NULL,"
                " next_attempt_at = now() + interval '5 seconds' WHERE id = ANY($1)", retry)
        if deferred:
            await conn.executemany(
                "UPDATE recipient SET attempts = attempts + 1, last_reply = $2, next_attempt_at = $3,"
                " lease_until = NULL, lease_owner = NULL, delay_notified = $4, updated_at = now()"
                " WHERE id = $1", deferred)
        if finals:
            await conn.executemany(
                "UPDATE recipient SET state = $2, attempts = attempts + 1, last_reply = $3,"
                " lease_until = NULL, lease_owner = NULL, updated_at = now() WHERE id = $1", finals)
        for mid, reason in dead_messages.items():
            await conn.execute("UPDATE message SET dead_reason = $2, dead_stage = 'delivery' WHERE id = $1",
                               mid, reason)
        for kind, groups in notices:
            for mid, items in groups.items():
                events.extend(await self._notify(conn, kind, mid, items))

    async def _notify(self, conn, kind: str, message_id: str, items) -> list[Event]:
        self.wake()          # the notification is a new queued message
        return await enqueue_notification(conn, self.settings.smtp.hostname, kind, message_id, items)


async def _wait(stop: asyncio.Event, timeout: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), timeout)
    except asyncio.TimeoutError:
        pass


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()
