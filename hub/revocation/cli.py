"""`hub revocation status` (the CRLs the hub holds, their dates and last errors) and `hub revocation refresh`
(fetch every CRL now; exit 1 if one fails)."""

from __future__ import annotations

from datetime import datetime, timezone


def register(sub) -> None:
    p = sub.add_parser("revocation", help="certificate revocation lists (CRL) of the trust space")
    s = p.add_subparsers(dest="revocation_command", metavar="ACTION")
    s.required = True
    st = s.add_parser("status", help="the CRLs held: issuer, thisUpdate, nextUpdate, entries, last error")
    st.set_defaults(run=_cmd_status)
    rf = s.add_parser("refresh", help="fetch every known and configured CRL now")
    rf.set_defaults(run=_cmd_refresh)


def _when(value: datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M} UTC" if value else "-"


async def _cmd_status(args, ctx) -> int:
    from hub.revocation import store

    async with ctx.connection() as conn:
        rows = await store.all_rows(conn)
    if not rows:
        print("no CRL known yet (learned from the first certificate that names one, or revocation.crl_urls)")
        return 0
    now = datetime.now(timezone.utc)
    for r in rows:
        state = "ok" if r["fetched_at"] and not r["last_error"] else "FAILING" if r["last_error"] else "not fetched"
        if r["next_update"] and r["next_update"] <= now:
            state = "EXPIRED"
        print(f"{state:11} {r['url']}{' (configured)' if r['configured'] else ''}\n"
              f"            issuer {r['issuer'] or '-'}; {r['entries'] if r['entries'] is not None else '-'} revoked;"
              f" thisUpdate {_when(r['this_update'])}; nextUpdate {_when(r['next_update'])};"
              f" fetched {_when(r['fetched_at'])}; next fetch {_when(r['next_fetch_at'])}")
        if r["last_error"]:
            print(f"            last error ({_when(r['last_error_at'])}): {r['last_error']}")
    return 0


async def _cmd_refresh(args, ctx) -> int:
    from hub.revocation import RevocationChecker, store

    pool = await ctx.pool(min_size=1, max_size=2)
    checker = RevocationChecker(ctx.settings, pool)
    try:
        await checker.start()
        async with pool.acquire() as conn:
            await store.make_due(conn)
        failed = fetched = 0
        while results := await checker.fetch_due():
            for url, error in results:
                print(f"{'FAILED' if error else 'ok':7} {url}{f': {error}' if error else ''}")
                failed += error is not None
                fetched += 1
        if not fetched:
            print("no CRL known yet (learned from the first certificate that names one, or revocation.crl_urls)")
    finally:
        await checker.close()
        await pool.close()
    return 1 if failed else 0
