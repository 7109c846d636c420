"""`hub accounts`: the establishments allowed to send through the hub."""

from __future__ import annotations

import ipaddress
import sys
from pathlib import Path

from hub.errors import InputError
from hub.intake import store
from hub.intake.auth import hash_password


def register(sub) -> None:
    p = sub.add_parser("accounts", help="sender accounts (establishments)")
    s = p.add_subparsers(dest="accounts_command", metavar="ACTION")
    s.required = True
    add = s.add_parser("add", help="create or update an account")
    add.add_argument("name")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    add.add_argument("--password-file", type=Path, help="read the password from this file (first line)")
    add.add_argument("--cert-subject", help="client certificate subject DN, e.g. 'CN=dpi.ch-exemple.fr,O=CH Exemple'")
    add.add_argument("--network", action="append", default=[], metavar="CIDR",
                     help="client network trusted without login (repeatable), like Postfix mynetworks")
    add.add_argument("--allow-from", action="append", default=[], metavar="DOMAIN_OR_ADDRESS",
                     help="MAIL FROM address, @domain or domain this account may use (repeatable)")
    add.add_argument("--fallback-mailbox", help="where unresolved recipients go when the fallback is a mailbox")
    add.set_defaults(run=_add)
    ls = s.add_parser("list", help="list accounts")
    ls.set_defaults(run=_list)
    dis = s.add_parser("disable", help="disable an account (its sessions are refused from now on)")
    dis.add_argument("name")
    dis.set_defaults(run=_disable)
    en = s.add_parser("enable", help="enable a disabled account")
    en.add_argument("name")
    en.set_defaults(run=_enable)


def _password(args) -> str | None:
    if args.password_stdin:
        value = sys.stdin.readline().rstrip("\r\n")
        where = "standard input"
    elif args.password_file:
        try:
            value = args.password_file.read_text().splitlines()[0] if args.password_file.exists() else None
        except IndexError:
            value = ""
        if value is None:
            raise InputError("no such file", where=str(args.password_file))
        where = str(args.password_file)
    else:
        return None
    if len(value) < 12:
        raise InputError("the password must have at least 12 characters", where=where)
    return value


async def _add(args, ctx) -> int:
    password = _password(args)
    for net in args.network:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise InputError(f"not a network: {net!r}", where="--network") from None
    for item in args.allow_from:
        if not item or " " in item or item.count("@") > 1:
            raise InputError(f"not an address or domain: {item!r}", where="--allow-from")
    if not (password or args.cert_subject or args.network):
        raise InputError("an account needs a password, a certificate subject or a network to log in with")
    if not args.allow_from:
        raise InputError("say which sender addresses or domains the account may use (--allow-from)")
    async with ctx.connection() as conn:
        created = await store.add_account(
            conn, args.name, password_hash=hash_password(password) if password else None,
            cert_subject=args.cert_subject, networks=args.network, allow_from=args.allow_from,
            fallback_mailbox=args.fallback_mailbox)
    print(f"account {args.name} {'created' if created else 'updated'}")
    return 0


async def _list(args, ctx) -> int:
    async with ctx.connection() as conn:
        accounts = await store.all_accounts(conn)
    for a in accounts:
        login = ", ".join(x for x in ("password" if a.password_hash else "",
                                      f"certificate {a.cert_subject}" if a.cert_subject else "",
                                      "networks " + " ".join(map(str, a.networks)) if a.networks else "") if x)
        print(f"{a.name}{' (disabled)' if a.disabled else ''}: login by {login}; may send as "
              f"{' '.join(a.allow_from)}")
    return 0


async def _set_disabled(args, ctx, disabled: bool) -> int:
    async with ctx.connection() as conn:
        if not await store.set_disabled(conn, args.name, disabled):
            raise InputError(f"no account named {args.name!r}")
    print(f"account {args.name} {'disabled' if disabled else 'enabled'}")
    return 0


async def _disable(args, ctx) -> int:
    return await _set_disabled(args, ctx, True)


async def _enable(args, ctx) -> int:
    return await _set_disabled(args, ctx, False)
