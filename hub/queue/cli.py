"""`hub queue`: the operator's queue toolbox, like Postfix's postqueue, postsuper, postcat and qshape.

    hub queue list [--state S] [--domain D] [--account A] [--limit N] [--json]
    hub queue summary [--state S] [--json]          recipients by destination domain and age (qshape)
    hub queue show ID [--json]                      why each recipient waits and what happens next
    hub queue hold ID [--reason TEXT] | release ID | requeue ID | delete ID --reason TEXT
    hub queue flush [--domain D]                    deferred recipients are due now
    hub queue view ID [--headers]                   the message as stored (audited)

The actions are in hub.queue.ops (shared with /api/queue); the actor recorded is `cli:<user>`.
"""

from __future__ import annotations

import json
import sys

from hub.audit.cli import _actor
from hub.queue import ops


def register(sub) -> None:
    p = sub.add_parser("queue", help="inspect and act on the queue (list, summary, show, hold, release, requeue,"
                                     " delete, flush, view)")
    s = p.add_subparsers(dest="queue_command", metavar="ACTION")
    s.required = True
    ls = s.add_parser("list", help="messages with recipients waiting or dead, oldest first, and a summary line")
    ls.add_argument("--state", choices=ops.LIST_STATES, default="all",
                    help="processing, queued (first attempt due), deferred, active (being delivered), held, dead;"
                         " default: all of them")
    ls.add_argument("--domain", help="only recipients of this destination domain")
    ls.add_argument("--account", help="only messages of this sender account")
    ls.add_argument("--limit", type=int, default=100, help="at most this many messages listed (default 100)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(run=_list)
    sm = s.add_parser("summary", help="recipients by destination domain and age of their message, like qshape")
    sm.add_argument("--state", choices=ops.SUMMARY_STATES, default="waiting",
                    help="waiting (default: processing, queued, deferred, held), queued, deferred, held, dead, all")
    sm.add_argument("--json", action="store_true")
    sm.set_defaults(run=_summary)
    sh = s.add_parser("show", help="a message's recipients: state, why, and what happens next")
    sh.add_argument("message_id", metavar="ID", help="the message id (the one in `250 2.0.0 queued as ID`)")
    sh.add_argument("--json", action="store_true")
    sh.set_defaults(run=_show)
    hd = s.add_parser("hold", help="hold a message's waiting recipients (no delivery until release)")
    hd.add_argument("message_id", metavar="ID", help="the message id")
    hd.add_argument("--reason", default="", help="why (recorded in the audit trail; no patient data)")
    hd.set_defaults(run=_hold)
    rl = s.add_parser("release", help="release a held message (a rule's hold keeps its transform and header edits)")
    rl.add_argument("message_id", metavar="ID", help="the message id")
    rl.set_defaults(run=_release)
    rq = s.add_parser("requeue", help="send a message's dead recipients through delivery again")
    rq.add_argument("message_id", metavar="ID", help="the message id")
    rq.set_defaults(run=_requeue)
    dl = s.add_parser("delete", help="drop a message: no delivery, no notification, body purged now, audited")
    dl.add_argument("message_id", metavar="ID", help="the message id")
    dl.add_argument("--reason", required=True, help="why (recorded in the audit trail; no patient data)")
    dl.set_defaults(run=_delete)
    fl = s.add_parser("flush", help="retry every deferred recipient now (or those of one domain)")
    fl.add_argument("--domain", help="only recipients of this destination domain")
    fl.set_defaults(run=_flush)
    vw = s.add_parser("view", help="print the message as stored (the access is audited)")
    vw.add_argument("message_id", metavar="ID", help="the message id")
    vw.add_argument("--headers", action="store_true", help="the header block only")
    vw.set_defaults(run=_view)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _default(value):
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _print_json(data) -> None:
    print(json.dumps(data, default=_default, ensure_ascii=False, indent=2))


async def _list(args, ctx) -> int:
    async with ctx.connection() as conn:
        messages, summary = await ops.list_messages(conn, state=args.state, domain=args.domain,
                                                    account=args.account, limit=args.limit)
        now = await conn.fetchval("SELECT now()")
    if args.json:
        _print_json({"messages": messages, "summary": summary})
        return 0
    filtered = args.state != "all" or args.domain or args.account
    if not messages:
        print("no message matches" if filtered else "queue is empty")
        return 0
    print(f"{'ID':<26} {'STATE':<18} {'AGE':>7} {'SIZE':>9}  {'ACCOUNT':<14} SENDER -> RECIPIENTS")
    for m in messages:
        where = ", ".join(m["domains"][:3]) + (" ..." if len(m["domains"]) > 3 else "")
        print(f"{m['id']:<26} {m['state']:<18} {ops.duration((now - m['received_at']).total_seconds()):>7} "
              f"{_size(m['size']):>9}  {(m['account'] or '-'):<14} <{m['mail_from']}> -> {m['recipients']} at "
              f"{where}")
        reason = m["dead_reason"] if "dead" in m["state"] and m["dead_reason"] else m["last_reply"]
        if reason and m["state"] not in ("queued", "processing"):
            print(f"{'':<27}({reason[:160]})")
    counts = ", ".join(f"{n} {state}" for state, n in summary["recipients"].items())
    shown = f" ({len(messages)} listed)" if len(messages) < summary["messages"] else ""
    print(f"-- {summary['messages']} message(s){shown}, {_size(summary['bytes'])}, recipients: {counts};"
          f" {summary['domains']} destination domain(s)")
    return 0


async def _summary(args, ctx) -> int:
    async with ctx.connection() as conn:
        shape = await ops.summary(conn, state=args.state)
    if args.json:
        _print_json(shape)
        return 0
    heads = ["T"] + [str(b) for b in shape["buckets"]] + [f"{shape['buckets'][-1]}+"]
    width = max([len("TOTAL")] + [len(d) for d in shape["domains"]])
    print(f"{'':>{width}} " + " ".join(f"{h:>6}" for h in heads) + f"   ({args.state} recipients; columns:"
          " message age in minutes)")
    for name, line in [("TOTAL", shape["total"]), *shape["domains"].items()]:
        print(f"{name:>{width}} " + " ".join(f"{n:>6}" for n in line))
    return 0


async def _show(args, ctx) -> int:
    async with ctx.connection() as conn:
        m = await ops.show(conn, args.message_id, ctx.settings)
    if args.json:
        _print_json(m)
        return 0
    print(f"message {m['id']}: {m['state']}, received {m['received_at']:%Y-%m-%d %H:%M:%S %Z} ({m['age']} ago)"
          f" from {m['account'] or '-'} <{m['mail_from']}> ({m['peer'] or '?'}), {_size(m['size'])},"
          f" body {m['body']}" + (f" (rules version {m['rule_version']})" if m["rule_version"] else ""))
    if m["deleted_reason"]:
        print(f"  deleted: {m['deleted_reason']}")
    for r in m["recipients"]:
        target = r["address"] + (f" (for {r['rcpt']})" if r["rcpt"] != r["address"] else "")
        print(f"  <{target}> {r['state']}, {r['attempts']} attempt(s)")
        print(f"      why:  {r['why']}")
        print(f"      next: {r['next']}")
    return 0


async def _hold(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await ops.hold(conn, args.message_id, _actor(), args.reason)
    print(f"message {args.message_id}: {n} recipient(s) held; `hub queue release {args.message_id}` to deliver")
    return 0


async def _release(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await ops.release(conn, args.message_id, _actor())
    print(f"message {args.message_id} released ({n} recipient(s))")
    return 0


async def _requeue(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await ops.requeue(conn, args.message_id, _actor())
    print(f"message {args.message_id} requeued ({n} recipient(s))")
    return 0


async def _delete(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await ops.delete(conn, args.message_id, _actor(), args.reason)
    print(f"message {args.message_id} deleted ({n} recipient(s) dropped, body purged); the deletion is in"
          f" `hub audit timeline {args.message_id}`")
    return 0


async def _flush(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await ops.flush(conn, _actor(), args.domain)
    print(f"{n} deferred recipient(s) due now" + (f" for {args.domain}" if args.domain else ""))
    return 0


async def _view(args, ctx) -> int:
    async with ctx.connection() as conn:
        body = await ops.view(conn, args.message_id, _actor())
    if args.headers:
        body = body.split(b"\r\n\r\n", 1)[0] + b"\r\n"
    out = sys.stdout.buffer
    out.write(body.replace(b"\r\n", b"\n"))
    out.flush()
    return 0

