"""`hub directory ...`: import, status, lookup, resolve, prefs.

    hub directory import FILE [--force]        Extraction_Correspondance_MSSante / PS_LibreAcces (zip or text)
    hub directory status [--json]               current generations, counts, last imports
    hub directory lookup QUERY [--json]         address, @domain, national id, RPPS, FINESS, SIRET or "name town"
    hub directory resolve RCPT [--sender-structure FINESS] [--json]   what the SMTP intake would decide
    hub directory prefs set KEY [--paper | --no-paper] [--format F] [--preferred-mailbox ADDR] [--note TEXT]
    hub directory prefs clear KEY | prefs list [--json]

Everything runs as the runtime role (imports need only DML, TRUNCATE and the directory_analyze() function). Settings read: directory.max_rejected_ratio, directory.max_shrink_ratio, hub.domains, the resolution domain.
"""

from __future__ import annotations

import getpass
import json
import re
from pathlib import Path
from typing import Any

from hub.audit.store import Event, record
from hub.directory import lookup as lookup_mod, normalize, store
from hub.directory.importer import import_file
from hub.directory.resolve import Resolver
from hub.errors import ConfigError, InputError

_FORMAT = re.compile(r"^[a-z0-9][a-z0-9._-]{0,31}$")


def register(sub) -> None:
    p = sub.add_parser("directory", help="the national healthcare directory (Annuaire Santé) and recipient resolution")
    s = p.add_subparsers(dest="directory_command", metavar="ACTION")
    s.required = True

    imp = s.add_parser("import", help="import Extraction_Correspondance_MSSante or PS_LibreAcces_Personne_activite")
    imp.add_argument("file", type=Path)
    imp.add_argument("--force", action="store_true", help="accept a file that shrinks the directory a lot")
    imp.set_defaults(run=_cmd_import)

    st = s.add_parser("status", help="current generations, counts and recent imports")
    st.add_argument("--json", action="store_true")
    st.set_defaults(run=_cmd_status)

    lk = s.add_parser("lookup", help="search by address, national id, FINESS, SIRET or free text")
    lk.add_argument("query")
    lk.add_argument("--json", action="store_true")
    lk.add_argument("--limit", type=int, default=20)
    lk.set_defaults(run=_cmd_lookup)

    rs = s.add_parser("resolve", help="resolve a recipient as the SMTP intake would")
    rs.add_argument("rcpt")
    rs.add_argument("--sender-structure", help="the sender's structure (FINESS or idNatSt)")
    rs.add_argument("--json", action="store_true")
    rs.set_defaults(run=_cmd_resolve)

    pr = s.add_parser("prefs", help="local recipient preferences (never replaced by imports)")
    ps = pr.add_subparsers(dest="prefs_command", metavar="ACTION")
    ps.required = True
    pset = ps.add_parser("set", help="set preferences for an address or a national id (RPPS / IDNPS)")
    pset.add_argument("key", metavar="ADDRESS_OR_ID")
    paper = pset.add_mutually_exclusive_group()
    paper.add_argument("--paper", dest="paper", action="store_true", default=None, help="paper only")
    paper.add_argument("--no-paper", dest="paper", action="store_false")
    pset.add_argument("--format", dest="preferred_format", help="preferred format (pdf, cda, hprim...); '' clears")
    pset.add_argument("--preferred-mailbox", help="for a national id: the mailbox to use; '' clears")
    pset.add_argument("--note")
    pset.set_defaults(run=_cmd_prefs_set)
    pclr = ps.add_parser("clear", help="remove every preference for a key")
    pclr.add_argument("key", metavar="ADDRESS_OR_ID")
    pclr.set_defaults(run=_cmd_prefs_clear)
    plist = ps.add_parser("list", help="list preferences")
    plist.add_argument("--json", action="store_true")
    plist.set_defaults(run=_cmd_prefs_list)


def _ratio(value: float, key: str) -> float:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"setting directory.{key}: expected a fraction between 0 and 1, got {value!r}")
    return value


async def _cmd_import(args, ctx) -> int:
    d = ctx.settings.directory
    async with ctx.connection() as conn:
        r = await import_file(conn, args.file, force=args.force,
                              max_rejected_ratio=_ratio(d.max_rejected_ratio, "max_rejected_ratio"),
                              max_shrink_ratio=_ratio(d.max_shrink_ratio, "max_shrink_ratio"))
    what = "mailboxes" if r.source == "mssante" else "practitioners"
    print(f"imported {r.file} ({r.source}) as import #{r.import_id}: {r.loaded} {what}; added {r.added}, "
          f"removed {r.removed}, changed {r.changed}, rejected {r.rejected} line(s), duplicates {r.duplicates} "
          f"({r.lines} lines, {r.seconds:.1f} s)")
    if r.rejected:
        print(f"rejected lines (first {len(r.rejected_lines)}): {', '.join(map(str, r.rejected_lines))}")
    return 0


async def _cmd_status(args, ctx) -> int:
    async with ctx.connection() as conn:
        gens = {src: dict(await store.current(conn, src)) for src in store.SOURCES}
        counts = await store.counts(conn)
        history = [dict(r) for r in await store.imports(conn, 10)]
    if args.json:
        print(json.dumps({"current": gens, "counts": counts, "imports": history}, default=str, ensure_ascii=False,
                         indent=2))
        return 0
    for src, g in gens.items():
        when = f"import #{g['import_id']} since {g['switched_at']:%Y-%m-%d %H:%M:%S%z}" if g["import_id"] else "none"
        print(f"{src:8} current generation: {when} (slot {g['slot']})")
    print("counts: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print("recent imports:")
    for h in history:
        print(f"  #{h['id']} {h['started_at']:%Y-%m-%d %H:%M} {h['source']:8} {h['status']:8} {h['file']}: "
              f"lines {h['lines']}, loaded {h['loaded']}, +{h['added']} -{h['removed']} ~{h['changed']}, "
              f"rejected {h['rejected']}" + (f" — {h['message']}" if h["message"] else ""))
    return 0


def _describe(m: lookup_mod.Match) -> str:
    d = m.data
    person = " ".join(x for x in (d.get("civility"), d.get("first_name"), d.get("last_name")) if x)
    trade = " / ".join(x for x in (d.get("profession_label"), d.get("specialty_label")) if x)
    place = ", ".join(x for x in (d.get("service"), d.get("structure_name") or d.get("name"),
                                  " ".join(y for y in (d.get("postcode"), d.get("town")) if y)) if x)
    if m.kind == "mailbox":
        head = f"{d['address']}  {d.get('mailbox_type', '')}  {d.get('national_id') or d.get('finess') or ''}"
    elif m.kind == "practitioner":
        head = f"{d['national_id']}  modes {d.get('practice_modes') or '-'}  {d.get('activities', 0)} activit(ies)"
    else:
        head = f"{d['structure_key']}"
    flags = " PAPER" if d.get("paper") else ""
    body = " — ".join(x for x in (person and (person + (f" ({trade})" if trade else "")), place) if x)
    return f"{m.kind:12} {head}{flags}\n             {body}  [{m.matched}]"


async def _cmd_lookup(args, ctx) -> int:
    async with ctx.connection() as conn:
        matches = await lookup_mod.search(conn, args.query, limit=args.limit)
    if args.json:
        print(json.dumps({"query": args.query, "results": [m.as_dict() for m in matches]}, ensure_ascii=False,
                         default=str, indent=2))
        return 0
    if not matches:
        print(f"no match for {args.query!r}")
        return 1
    for m in matches:
        print(_describe(m))
    return 0


async def _cmd_resolve(args, ctx) -> int:
    from hub.directory.trust import TrustSpace   # the lead's authorised-domains list

    s = ctx.settings
    trust = TrustSpace(s.hub.domains, s.delivery.local_domains)
    async with ctx.connection() as conn:
        await trust.load(conn)
        resolver = Resolver(resolution_domain=s.resolution_domain, hub_domains=s.hub.domains,
                            is_trusted_domain=trust.is_trusted)
        res = await resolver.resolve(conn, args.rcpt, sender_structure=args.sender_structure)
    if args.json:
        print(json.dumps(res.__dict__, ensure_ascii=False, indent=2))
    else:
        print(f"{res.rcpt} -> {res.address or '(unresolved)'}  method={res.method} kind={res.kind}"
              f"{' type=' + res.mailbox_type if res.mailbox_type else ''}{' PAPER' if res.paper else ''}"
              f"{' FLAGGED' if res.flagged else ''}\n  {res.reason}")
    return 0 if res.address else 1


def pref_key(value: str) -> str:
    """A preference key: a lower-case address, or an IDNPS (an 11-digit RPPS becomes 8+RPPS)."""
    if "@" in value:
        addr = normalize.address(value)
        if addr is None:
            raise InputError(f"not a mailbox address: {value!r}")
        return addr
    nid = normalize.national_id(value)
    if nid is None:
        raise InputError(f"not an address or a national id (8+RPPS, 0+ADELI, 11-digit RPPS): {value!r}")
    return nid


async def _cmd_prefs_set(args, ctx) -> int:
    key = pref_key(args.key)
    changes: dict[str, Any] = {}
    if args.paper is not None:
        changes["paper"] = args.paper
    if args.preferred_format is not None:
        fmt = args.preferred_format.strip().lower()
        if fmt and not _FORMAT.match(fmt):
            raise InputError(f"--format: expected a short name such as pdf, cda, hprim, got {fmt!r}")
        changes["preferred_format"] = fmt or None
    if args.preferred_mailbox is not None:
        if "@" in key:
            raise InputError("--preferred-mailbox applies to a national id, not to an address")
        mailbox = args.preferred_mailbox.strip()
        changes["preferred_mailbox"] = pref_key(mailbox) if mailbox else None
        if mailbox and "@" not in changes["preferred_mailbox"]:
            raise InputError(f"--preferred-mailbox: not a mailbox address: {mailbox!r}")
    if args.note is not None:
        changes["note"] = args.note or None
    if not changes:
        raise InputError("nothing to set: give --paper/--no-paper, --format, --preferred-mailbox or --note")
    async with ctx.connection() as conn:
        async with conn.transaction():
            row = await store.set_preference(conn, key, **changes)
            await record(conn, Event(event="directory_preference_set", actor=_actor(),
                                     facts={"key": key, **{k: v for k, v in changes.items()}}))
        if changes.get("preferred_mailbox"):
            published = await conn.fetchval("SELECT national_id FROM directory_mailbox WHERE address = $1",
                                            changes["preferred_mailbox"])
            if published != key:
                print(f"warning: {changes['preferred_mailbox']} is not a published mailbox of {key}; "
                      "it is used only while it is")
    print(_pref_line(row))
    return 0


async def _cmd_prefs_clear(args, ctx) -> int:
    key = pref_key(args.key)
    async with ctx.connection() as conn:
        async with conn.transaction():
            found = await store.delete_preference(conn, key)
            if found:
                await record(conn, Event(event="directory_preference_cleared", actor=_actor(), facts={"key": key}))
    print(f"{key}: preferences cleared" if found else f"{key}: no preferences")
    return 0 if found else 1


async def _cmd_prefs_list(args, ctx) -> int:
    async with ctx.connection() as conn:
        rows = await store.preferences(conn)
    if args.json:
        print(json.dumps([dict(r) for r in rows], default=str, ensure_ascii=False, indent=2))
    else:
        for r in rows:
            print(_pref_line(r))
    return 0


def _pref_line(r) -> str:
    parts = [r["key"], "paper only" if r["paper"] else "electronic"]
    if r["preferred_format"]:
        parts.append(f"format {r['preferred_format']}")
    if r["preferred_mailbox"]:
        parts.append(f"preferred mailbox {r['preferred_mailbox']}")
    if r["note"]:
        parts.append(f"note: {r['note']}")
    return "  ".join(parts)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"
