"""`hub db backup FILE` and `hub db restore FILE`: the database (queue, bodies, audit trail, accounts, lists,
directory, rules) as one pg_dump archive, for the embedded and for an external PostgreSQL alike.

backup   pg_dump --format=custom of the hub database, as the admin role, while the hub runs (a consistent
         snapshot); the file is created 0600 (it holds message bodies). The audit key (audit.patient_key_file,
         default data_dir/audit.key) is not in the database: back it up with the configuration and certificates.
restore  into an empty database only (a fresh data_dir for the embedded server, or a new database on your
         server): pg_restore without owners and grants, then the migrations newer than the archive and the
         runtime role's grants, as at start-up. Refused while a `hub serve` uses the data directory or when the
         database already holds the hub's tables. Afterwards `hub audit verify` checks the restored trail.

The pg_dump / pg_restore used are those of the `pgserver` wheel (PostgreSQL 16) unless PATH has newer ones (pg_dump
must not be older than the server).
"""

from __future__ import annotations

import asyncio
import fcntl
import os
import shutil
import subprocess
from pathlib import Path

from hub import db
from hub.errors import ConfigError, HubError, InputError


def register(dbsub) -> None:
    b = dbsub.add_parser("backup", help="write the whole database to FILE (pg_dump archive; the hub may run)")
    b.add_argument("file", type=Path, metavar="FILE", help="the archive to write (created 0600; must not exist)")
    b.set_defaults(run=_backup)
    r = dbsub.add_parser("restore", help="restore FILE into an empty database (stop the hub first)")
    r.add_argument("file", type=Path, metavar="FILE", help="an archive written by `hub db backup`")
    r.set_defaults(run=_restore)


def _tool(name: str) -> str:
    bundled = None
    try:
        bundled = db._bin_dir() / name
    except ConfigError:
        pass
    on_path = shutil.which(name)
    if on_path and bundled and bundled.exists():
        return on_path if _major(on_path) > _major(str(bundled)) else str(bundled)
    if bundled and bundled.exists():
        return str(bundled)
    if on_path:
        return on_path
    raise ConfigError(f"{name} not found (install the PostgreSQL client, or the pgserver package)")


def _major(path: str) -> int:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10).stdout
        return int(out.split()[-1].split(".")[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return 0


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        raise HubError(f"{what} failed: {lines[-1] if lines else f'exit {proc.returncode}'}")


async def _backup(args, ctx) -> int:
    target: Path = args.file
    if target.exists():
        raise InputError("the file exists already (a backup never overwrites one)", where=str(target))
    url = ctx.urls().admin
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    try:
        await asyncio.to_thread(_run, [_tool("pg_dump"), "--format=custom", "--no-owner", "--no-privileges",
                                       f"--file={target}", f"--dbname={url}"], "pg_dump")
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    size = target.stat().st_size
    print(f"database written to {target} ({size} bytes); keep with it the audit key "
          f"{ctx.settings.audit.patient_key_file or ctx.settings.data_dir / 'audit.key'}, the configuration and the"
          " certificates")
    return 0


def _refuse_if_served(settings) -> None:
    lock = settings.data_dir / "hub.lock"
    if settings.database.url or not lock.exists():
        return
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise ConfigError(f"setting hub.data_dir: {settings.data_dir} is in use by a running `hub serve`:"
                          " stop it before restoring") from None
    finally:
        os.close(fd)


async def _restore(args, ctx) -> int:
    source: Path = args.file
    if not source.is_file():
        raise InputError("no such file", where=str(source))
    _refuse_if_served(ctx.settings)
    urls = ctx.urls()
    conn = await db.connect(urls.admin, ctx.settings)
    try:
        if await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL OR"
                               " to_regclass('message') IS NOT NULL"):
            raise InputError(f"the database {db.describe(urls.admin)} already holds a hub: restore into an empty"
                             " database (a new data_dir, or a new database on your server)")
    finally:
        await conn.close()
    await asyncio.to_thread(_run, [_tool("pg_restore"), "--no-owner", "--no-privileges", "--exit-on-error",
                                   "--single-transaction", f"--dbname={urls.admin}", str(source)], "pg_restore")
    applied = await db.migrate(urls.admin)
    conn = await db.connect(urls.admin, ctx.settings)
    try:
        await db._grant_runtime(conn, db.RUNTIME_ROLE)
        counts = await conn.fetchrow("SELECT (SELECT count(*) FROM message) AS messages,"
                                     " (SELECT count(*) FROM audit_event) AS events")
    finally:
        await conn.close()
    ctx._migrated = True
    print(f"restored {source}: {counts['messages']} message(s), {counts['events']} audit event(s)"
          + (f"; applied {len(applied)} newer migration(s)" if applied else "")
          + "; check the trail with `hub audit verify`")
    return 0
