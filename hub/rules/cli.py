"""`hub rules`: check, history, diff, rollback, reload, explain, replay.

    check [DIR]                      validate the files (no database); every error as DIR/file:line:col; exit 2
    history [--limit N]              activated versions, newest first
    diff A B                         unified diff per file between versions (a version number, or `disk`)
    rollback VERSION                 re-activate VERSION's content as a new version and write it back to the dir
    reload [--dir DIR]               activate the files (if valid and changed); running hubs pick it up
    explain MSG.eml --account NAME   how a message would be routed, without sending anything
    replay --since 7d [DIR]          which recent decisions the files in DIR would change

Settings read: rules.dir (default DIR), transform.* and hub.nil (to list the transform chain names).
"""

from __future__ import annotations

import contextlib
import difflib
import getpass
import os
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from hub.errors import ConfigError, HubError
from hub.rules import explain as explain_mod
from hub.rules import service as service_mod
from hub.rules import store
from hub.rules.engine import recipient_kind_of
from hub.rules.loader import RulesInvalid, compile_files, read_dir, transform_names
from hub.rules.matchers import PARIS


def register(subparsers) -> None:
    p = subparsers.add_parser("rules", help="routing rules: check, history, diff, rollback, reload, explain, replay")
    sub = p.add_subparsers(dest="rules_command", metavar="ACTION")
    sub.required = True

    c = sub.add_parser("check", help="validate rule files (no database needed)")
    c.add_argument("dir", nargs="?", help="rules directory (default: setting rules.dir)")
    c.set_defaults(run=cmd_check, sync=True)

    h = sub.add_parser("history", help="activated versions")
    h.add_argument("--limit", type=int, default=50)
    h.set_defaults(run=cmd_history)

    d = sub.add_parser("diff", help="unified diff between two versions (number or 'disk')")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--dir", help="rules directory for 'disk' (default: setting rules.dir)")
    d.set_defaults(run=cmd_diff)

    r = sub.add_parser("rollback", help="activate an earlier version's content and write it back to the directory")
    r.add_argument("version", type=int)
    r.add_argument("--dir", help="rules directory to write (default: setting rules.dir)")
    r.add_argument("--actor", help="who (default: the login name)")
    r.set_defaults(run=cmd_rollback)

    rl = sub.add_parser("reload", help="activate the rule files; running hubs pick up the new version")
    rl.add_argument("--dir", help="rules directory (default: setting rules.dir)")
    rl.add_argument("--actor", help="who (default: the login name)")
    rl.set_defaults(run=cmd_reload)

    e = sub.add_parser("explain", help="how a message would be routed (nothing is sent)")
    e.add_argument("message", help="an RFC 5322 message file (.eml)")
    e.add_argument("--account", required=True, help="sender account name")
    e.add_argument("--rcpt", action="append", default=[], help="recipient (repeatable; default: To and Cc)")
    e.add_argument("--mail-from", help="envelope sender (default: the From address)")
    e.add_argument("--kind", choices=("practitioner", "structure", "unresolved", "paper"),
                   help="recipient kind to assume instead of asking the directory")
    e.add_argument("--at", help="evaluation time, ISO 8601 (default: now)")
    e.add_argument("--dir", help="explain with the files of DIR instead of the active version")
    e.set_defaults(run=cmd_explain)

    rp = sub.add_parser("replay", help="re-evaluate recent routing decisions with the files of DIR")
    rp.add_argument("dir", nargs="?", help="candidate rules directory (default: setting rules.dir)")
    rp.add_argument("--since", default="7d", help="how far back: 7d, 12h, 30m, 2w (default 7d)")
    rp.set_defaults(run=cmd_replay)


def _actor(args) -> str:
    if getattr(args, "actor", None):
        return args.actor
    try:
        return os.environ.get("SUDO_USER") or getpass.getuser()
    except (KeyError, OSError):
        return "cli"


def _dir(args, ctx) -> str:
    return getattr(args, "dir", None) or ctx.settings.rules.dir


def _print_errors(directory: str, exc: RulesInvalid) -> None:
    for e in exc.errors:
        path = directory if e.file in ("(rules)", directory) else e.file if e.file.startswith("(") \
            else os.path.join(directory, e.file)
        print(f"{path}:{e.line}:{e.column}: {e.message}", file=sys.stderr)
    print(f"{len(exc.errors)} error(s): the rule set was not activated", file=sys.stderr)


def cmd_check(args, ctx) -> int:
    directory = _dir(args, ctx)
    try:
        files = read_dir(directory)
        rs = compile_files(files, transform_names(ctx.settings))
    except RulesInvalid as exc:
        _print_errors(directory, exc)
        return 2
    print(f"{directory}: ok, {len(rs.rules)} rules in {len(files)} files, hash {rs.content_hash[:12]}"
          f"{', content detection needed' if rs.needs_content else ''}")
    return 0


async def cmd_history(args, ctx) -> int:
    async with ctx.connection() as conn:
        versions = await store.history(conn, args.limit)
    if not versions:
        print("no rule set has been activated")
    for v in versions:
        extra = f" (content of version {v.rollback_of})" if v.rollback_of else ""
        print(f"{v.version:5d}  {v.activated_at:%Y-%m-%d %H:%M:%S%z}  {v.activated_by:<16} {v.reason:<8} "
              f"{v.content_hash[:12]}  {len(v.files)} files{extra}")
    return 0


async def _files_of(conn, which: str, directory: str) -> tuple[str, dict[str, str]]:
    if which == "disk":
        return directory, read_dir(directory)
    if not which.isdigit():
        raise ConfigError(f"expected a version number or 'disk', got {which!r}")
    stored = await store.get(conn, int(which))
    if stored is None:
        raise ConfigError(f"rules version {which} does not exist")
    return f"v{which}", dict(stored.files)


def unified_diff(a_label: str, a: dict[str, str], b_label: str, b: dict[str, str]) -> list[str]:
    out: list[str] = []
    for name in sorted(set(a) | set(b)):
        out.extend(difflib.unified_diff(
            a.get(name, "").splitlines(keepends=True), b.get(name, "").splitlines(keepends=True),
            fromfile=f"{a_label}/{name}" if name in a else "/dev/null",
            tofile=f"{b_label}/{name}" if name in b else "/dev/null"))
    return [line if line.endswith("\n") else line + "\n" for line in out]


async def cmd_diff(args, ctx) -> int:
    async with ctx.connection() as conn:
        a_label, a = await _files_of(conn, args.a, _dir(args, ctx))
        b_label, b = await _files_of(conn, args.b, _dir(args, ctx))
    lines = unified_diff(a_label, a, b_label, b)
    sys.stdout.writelines(lines)
    if not lines:
        print(f"{a_label} and {b_label} are identical")
    return 0


async def cmd_rollback(args, ctx) -> int:
    directory = _dir(args, ctx)
    async with ctx.connection() as conn:
        try:
            version, created = await service_mod.rollback(conn, args.version, directory,
                                                          transform_names(ctx.settings), actor=_actor(args))
        except RulesInvalid as exc:
            print(f"version {args.version} no longer validates:", file=sys.stderr)
            _print_errors(f"v{args.version}", exc)
            return 2
    state = "activated as version" if created else "is already the current content: version"
    print(f"content of version {args.version} {state} {version}; files written to {directory}")
    return 0


async def cmd_reload(args, ctx) -> int:
    directory = _dir(args, ctx)
    svc = service_mod.RulesService(replace(ctx.settings.rules, dir=directory), transform_names(ctx.settings))
    async with ctx.connection() as conn:
        result = await svc.reload(conn, actor=_actor(args))
    if not result.ok:
        _print_errors(directory, RulesInvalid(list(result.errors)))
        return 2
    print(f"version {result.version} " + ("activated; running hubs switch within rules.watch_interval"
                                          if result.created else "is current (files unchanged)"))
    return 0


async def cmd_explain(args, ctx) -> int:
    message = Path(args.message).read_bytes()
    transforms = transform_names(ctx.settings)
    try:
        now = datetime.fromisoformat(args.at) if args.at else None
    except ValueError:
        raise ConfigError(f"--at: expected an ISO 8601 time such as 2024-05-13T21:30, got {args.at!r}") from None
    if now is not None and now.tzinfo is None:
        now = now.replace(tzinfo=PARIS)
    rs = None
    if args.dir:
        try:
            rs = compile_files(read_dir(args.dir), transforms)
        except RulesInvalid as exc:
            _print_errors(args.dir, exc)
            return 2
    async with contextlib.AsyncExitStack() as stack:
        conn = None
        try:
            conn = await stack.enter_async_context(ctx.connection())
        except HubError as exc:
            print(f"(no database: {exc})", file=sys.stderr)
        if rs is None:
            rs = await _active_or_disk(conn, ctx, transforms)
            if rs is None:
                return 2
        resolver = await _directory_resolver(conn, ctx.settings) if conn is not None else None
        lines = await explain_mod.explain_message(
            rs, message, account=args.account, mail_from=args.mail_from, rcpts=args.rcpt, now=now,
            detector=content_detector(), resolver=resolver, recipient_kind=args.kind)
    print("\n".join(lines))
    return 0


async def _active_or_disk(conn, ctx, transforms):
    stored = await store.get(conn) if conn is not None else None
    try:
        if stored is not None:
            return compile_files(stored.files, transforms, version=stored.version)
        return compile_files(read_dir(ctx.settings.rules.dir), transforms)
    except RulesInvalid as exc:
        _print_errors(ctx.settings.rules.dir if stored is None else f"v{stored.version}", exc)
        return None


def content_detector():
    """hub.transform.detect (-> Detection with .kind, .doc_code); the temporary local classifier if absent."""
    try:
        from hub.transform import detect
    except ImportError:
        return explain_mod.temporary_detect

    def adapt(message: bytes):
        from hub.pipeline import UNPARSABLE

        try:
            found = detect(message)
        except Exception:        # as at intake (hub.pipeline): a structure that cannot be read is `unparsable`
            return UNPARSABLE, None
        return getattr(found, "kind", None), getattr(found, "doc_code", None) or None
    return adapt


async def _directory_resolver(conn, settings):
    """hub.directory.resolve.Resolver adapted to (recipient_kind, address); None when it is not available."""
    try:
        from hub.directory.resolve import Resolver
        from hub.directory.trust import TrustSpace
    except ImportError:
        return None
    trust = TrustSpace(settings.hub.domains, settings.delivery.local_domains)
    await trust.load(conn)
    resolver = Resolver(resolution_domain=settings.resolution_domain, hub_domains=settings.hub.domains,
                        is_trusted_domain=trust.is_trusted)

    async def resolve(address: str):
        found = await resolver.resolve(conn, address)
        return recipient_kind_of(found), found.address
    return resolve


async def cmd_replay(args, ctx) -> int:
    directory = _dir(args, ctx)
    transforms = transform_names(ctx.settings)
    try:
        since = explain_mod.parse_since(args.since)
        candidate = compile_files(read_dir(directory), transforms)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    except RulesInvalid as exc:
        _print_errors(directory, exc)
        return 2
    async with ctx.connection() as conn:
        report = await explain_mod.replay(conn, candidate, since=since, transforms=transforms)
    print("\n".join(report.lines()))
    return 0
