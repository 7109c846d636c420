"""`hub queue`: the operator's view of the queue (like postqueue/postsuper): list, show, retry now, release held,
requeue dead."""

from __future__ import annotations

import getpass

from hub.audit.store import Event, record
from hub.errors import InputError


def register(sub) -> None:
    p = sub.add_parser("queue", help="inspect and act on the queue")
    s = p.add_subparsers(dest="queue_command", metavar="ACTION")
    s.required = True
    ls = s.add_parser("list", help="messages not yet final (or --state)")
    ls.add_argument("--state", choices=["processing", "queued", "held", "done", "dead"])
    ls.add_argument("--limit", type=int, default=50)
    ls.set_defaults(run=_list)
    sh = s.add_parser("show", help="a message's recipients and their state")
    sh.add_argument("message_id")
    sh.set_defaults(run=_show)
    fl = s.add_parser("flush", help="retry every deferred recipient now")
    fl.set_defaults(run=_flush)
    rl = s.add_parser("release", help="release a held message for delivery")
    rl.add_argument("message_id")
    rl.set_defaults(run=_release)
    rq = s.add_parser("requeue", help="send a dead message's recipients through delivery again")
    rq.add_argument("message_id")
    rq.set_defaults(run=_requeue)


async def _list(args, ctx) -> int:
    async with ctx.connection() as conn:
        if args.state:
            rows = await conn.fetch("SELECT id, account, mail_from, state, size, received_at, dead_reason FROM message"
                                    " WHERE state = $1 ORDER BY received_at DESC LIMIT $2", args.state, args.limit)
        else:
            rows = await conn.fetch("SELECT id, account, mail_from, state, size, received_at, dead_reason FROM message"
                                    " WHERE state NOT IN ('done') ORDER BY received_at DESC LIMIT $1", args.limit)
        for r in rows:
            print(f"{r['id']}  {r['state']:<10} {r['received_at']:%Y-%m-%d %H:%M:%S}  {r['size']:>9}  "
                  f"{r['account'] or '-'}  <{r['mail_from']}>" + (f"  dead: {r['dead_reason']}" if r['dead_reason']
                                                                   else ""))
    return 0


async def _show(args, ctx) -> int:
    async with ctx.connection() as conn:
        m = await conn.fetchrow("SELECT * FROM message WHERE id = $1", args.message_id)
        if m is None:
            raise InputError(f"no message {args.message_id}")
        print(f"message {m['id']} state {m['state']} account {m['account']} from <{m['mail_from']}> size {m['size']}")
        for r in await conn.fetch("SELECT * FROM recipient WHERE message_id = $1 ORDER BY id", args.message_id):
            print(f"  <{r['address']}> {r['state']} attempts {r['attempts']} next {r['next_attempt_at']:%H:%M:%S} "
                  f"{r['last_reply'] or ''}")
    return 0


async def _flush(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await conn.execute("UPDATE recipient SET next_attempt_at = now() WHERE state = 'queued'")
        await conn.execute("NOTIFY hub_queue")
    print(f"{n.split()[-1]} recipient(s) due now")
    return 0


async def _release(args, ctx) -> int:
    async with ctx.connection() as conn:
        async with conn.transaction():
            st = await conn.fetchval("SELECT state FROM message WHERE id = $1 FOR UPDATE", args.message_id)
            if st is None:
                raise InputError(f"no message {args.message_id}")
            # a rule's hold keeps its plan (transform, header edits): those recipients go through processing;
            # a hold after a failed transformation has no plan left: the original is sent
            released = await conn.fetch(
                "UPDATE recipient SET state = CASE WHEN plan IS NULL THEN 'queued' ELSE 'pending' END,"
                " next_attempt_at = now(), updated_at = now() WHERE message_id = $1 AND state = 'held'"
                " RETURNING state", args.message_id)
            if not released:
                raise InputError(f"message {args.message_id} has no held recipient (it is {st})")
            pending = any(r["state"] == "pending" for r in released)
            await conn.execute("UPDATE message SET state = $2, lease_until = NULL WHERE id = $1",
                               args.message_id, "processing" if pending else "queued")
            await _operator_action(conn, "released", args.message_id)
    print(f"message {args.message_id} released")
    return 0


async def _requeue(args, ctx) -> int:
    async with ctx.connection() as conn:
        async with conn.transaction():
            n = await conn.execute("UPDATE recipient SET state = 'queued', next_attempt_at = now(), recoveries = 0"
                                   " WHERE message_id = $1 AND state = 'dead'", args.message_id)
            if n.endswith(" 0"):
                raise InputError(f"message {args.message_id} has no dead recipient")
            await conn.execute("UPDATE message SET state = 'queued', dead_reason = NULL, finished_at = NULL"
                               " WHERE id = $1", args.message_id)
            await _operator_action(conn, "requeued", args.message_id)
    print(f"message {args.message_id} requeued")
    return 0


async def _operator_action(conn, event: str, message_id: str) -> None:
    """Audit an operator's action on a message (who: the OS user running the command) and wake the workers."""
    await record(conn, Event(event, message_id=message_id, actor=getpass.getuser(), facts={"by": "cli"}))
    await conn.execute("NOTIFY hub_queue")
