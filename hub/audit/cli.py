"""`hub audit search|timeline|verify|seal|purge` and `hub tokens add|list|revoke`.

Every search and timeline is itself audited (`audit_searched`, actor `cli:<user>`, the filters with the INS as its
keyed hash). `verify` seals what can be sealed first, then checks; it exits 1 when a problem is found.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys

from hub.audit import chain, retention, search, tokens
from hub.audit.patient import load_patient_key
from hub.errors import InputError


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def register(sub: argparse._SubParsersAction) -> None:
    audit = sub.add_parser("audit", help="search, verify and purge the audit trail")
    asub = audit.add_subparsers(dest="audit_command", metavar="ACTION")
    asub.required = True

    p = asub.add_parser("search", help="messages matching filters, newest first")
    p.add_argument("--since", help="received at or after (ISO date or date-time, UTC if no offset)")
    p.add_argument("--until", help="received before (a bare date includes that day)")
    p.add_argument("--message", dest="message_id")
    p.add_argument("--account")
    p.add_argument("--sender")
    p.add_argument("--recipient")
    p.add_argument("--patient-ins", dest="patient_ins", help="the patient's INS (hashed before use)")
    p.add_argument("--doc-type", dest="doc_type")
    p.add_argument("--status", choices=search.STATES + search.OUTCOMES)
    p.add_argument("--rule-version", dest="rule_version")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--cursor", help="continue after the page that printed this cursor")
    p.add_argument("--order", choices=("desc", "asc"), default="desc")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.set_defaults(run=_search)

    p = asub.add_parser("timeline", help="every event of one message")
    p.add_argument("message_id", metavar="MESSAGE_ID")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.set_defaults(run=_timeline)

    p = asub.add_parser("verify", help="recompute the hash chain; exit 1 on an altered, missing or unsealed event")
    p.add_argument("--since", help="only blocks ending at or after this date")
    p.set_defaults(run=_verify)

    p = asub.add_parser("seal", help="seal committed events now")
    p.set_defaults(run=_seal)

    p = asub.add_parser("purge", help="apply retention now (bodies, expired months, partitions ahead)")
    p.set_defaults(run=_purge)

    tok = sub.add_parser("tokens", help="HTTP API tokens")
    tsub = tok.add_subparsers(dest="tokens_command", metavar="ACTION")
    tsub.required = True
    p = tsub.add_parser("add", help="create a token and print it once")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", choices=tokens.ROLES, required=True)
    p.add_argument("--account", help="scope an auditor token to one establishment's account")
    p.set_defaults(run=_tokens_add)
    p = tsub.add_parser("list", help="list tokens (never their values)")
    p.set_defaults(run=_tokens_list)
    p = tsub.add_parser("revoke", help="revoke a token")
    p.add_argument("name", metavar="NAME")
    p.set_defaults(run=_tokens_revoke)


async def _search(args, ctx) -> int:
    params = {k: getattr(args, k) for k in ("since", "until", "message_id", "account", "sender", "recipient",
                                            "patient_ins", "doc_type", "status", "rule_version")}
    key = load_patient_key(ctx.settings) if args.patient_ins else None
    filters = search.parse_filters(params, key)
    limit = args.limit or ctx.settings.audit.page_size
    async with ctx.connection() as conn:
        # search keys are written by the sealer: seal what is committed (a no-op if the hub's sealer is busy)
        await chain.AuditSealer(batch=ctx.settings.audit.seal_batch, max_wait=2.0).seal_once(conn)
        page = await search.search(conn, filters, cursor=args.cursor, limit=limit, order=args.order)
        await search.log_query(conn, actor=_actor(), via="cli", filters=filters.facts(),
                               results=len(page.messages))
    if args.format == "json":
        print(json.dumps(search.to_json(page), indent=2, ensure_ascii=False))
    elif args.format == "csv":
        sys.stdout.write(search.to_csv(page.messages))
    else:
        rows = [("RECEIVED (UTC)", "MESSAGE", "ACCOUNT", "SENDER", "RECIPIENTS", "DOC TYPES", "STATUS")]
        for m in page.messages:
            rcpts = m.recipients[0] + (f" +{len(m.recipients) - 1}" if len(m.recipients) > 1 else "") \
                if m.recipients else "-"
            rows.append((f"{m.received_at.astimezone(search.dt.timezone.utc):%Y-%m-%d %H:%M:%S}", m.message_id,
                         m.account or "-", m.sender or "-", rcpts, ",".join(m.doc_types) or "-", m.status))
        _table(rows)
        if page.next_cursor:
            print(f"more: --cursor {page.next_cursor}")
    return 0


async def _timeline(args, ctx) -> int:
    async with ctx.connection() as conn:
        found = await search.message_timeline(conn, args.message_id)
        await search.log_query(conn, actor=_actor(), via="cli", filters={"timeline": args.message_id},
                               results=0 if found is None else 1)
    if found is None:
        raise InputError(f"no audit event for message {args.message_id}")
    summary, events = found
    if args.format == "json":
        print(json.dumps({"message": summary.as_dict(), "events": [search.event_json(e) for e in events]},
                         indent=2, ensure_ascii=False))
        return 0
    print(f"message {summary.message_id}: {summary.status}; account {summary.account or '-'},"
          f" from {summary.sender or '-'} to {', '.join(summary.recipients) or '-'}")
    rows = [("AT (UTC)", "EVENT", "RECIPIENT", "FACTS")]
    for e in events:
        facts = " ".join(f"{k}={json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}"
                         for k, v in e["facts"].items())
        extra = [f"{k}={e[k]}" for k in ("doc_type", "rule_version") if e[k] is not None]
        rows.append((f"{e['at'].astimezone(search.dt.timezone.utc):%Y-%m-%d %H:%M:%S.%f}", e["event"],
                     e["recipient"] or "-", " ".join(extra + [facts]).strip()))
    _table(rows)
    return 0


async def _verify(args, ctx) -> int:
    since = search.parse_time(args.since) if args.since else None
    a = ctx.settings.audit
    async with ctx.connection() as conn:
        await chain.AuditSealer(batch=a.seal_batch).seal_once(conn)
        report = await chain.verify(conn, since)
    for line in report.lines():
        print(line)
    return 0 if report.ok else 1


async def _seal(args, ctx) -> int:
    async with ctx.connection() as conn:
        n = await chain.AuditSealer(batch=ctx.settings.audit.seal_batch).seal_once(conn)
    print(f"sealed {n} event(s)")
    return 0


async def _purge(args, ctx) -> int:
    async with ctx.connection() as conn:
        r = await retention.purge(conn, ctx.settings, actor=_actor())
    print(f"bodies purged: {r.bodies}; audit partitions created: {r.partitions_created}")
    for m in r.months:
        print(f"month {m['month']} dropped: {m['events']} events, {m['blocks']} seal blocks")
    return 0


async def _tokens_add(args, ctx) -> int:
    async with ctx.connection() as conn:
        token, secret = await tokens.create(conn, args.name, args.role, args.account, actor=_actor())
    print(secret)
    print(f"token {token.name} ({token.role}{', account ' + token.account if token.account else ''}) created;"
          " it is shown only once", file=sys.stderr)
    return 0


async def _tokens_list(args, ctx) -> int:
    async with ctx.connection() as conn:
        found = await tokens.list_tokens(conn)
    rows = [("NAME", "ROLE", "ACCOUNT", "CREATED", "REVOKED")]
    rows += [(t.name, t.role, t.account or "*", f"{t.created_at:%Y-%m-%d %H:%M}",
              f"{t.revoked_at:%Y-%m-%d %H:%M}" if t.revoked_at else "-") for t in found]
    _table(rows)
    return 0


async def _tokens_revoke(args, ctx) -> int:
    async with ctx.connection() as conn:
        if not await tokens.revoke(conn, args.name, actor=_actor()):
            raise InputError(f"no live token named {args.name!r}")
    print(f"token {args.name} revoked")
    return 0


def _table(rows: list[tuple]) -> None:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths)).rstrip())
