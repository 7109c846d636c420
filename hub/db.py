"""PostgreSQL: the embedded server, connection pools, and plain numbered SQL migrations.

Without `database.url` the hub runs its own PostgreSQL (binaries from the `pgserver` wheel) under
`<data_dir>/pg`, listening only on a Unix socket in a 0700 directory; as root it runs the server as the system user
`hubpg`. With a URL it uses that server. Migrations (`hub/migrations/NNNN_name.sql`) run in order, each in its own
transaction, recorded in `schema_migrations`; they run at start-up and with `hub db migrate`.

Roles: migrations run as the admin role (the embedded superuser, or `database.admin_url`, else `database.url`);
the hub then connects as the runtime role. On the embedded server that is `hub_app`, which may only SELECT and
INSERT on `audit_*` tables (the audit log is append-only for the hub, enforced by the database).

Settings read: database.*, hub.data_dir.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import pwd
import re
import subprocess
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import asyncpg

from hub.errors import ConfigError, DatabaseUnavailable
from hub.settings import Settings

RUNTIME_ROLE = "hub_app"
PG_SYSTEM_USER = "hubpg"
DB_NAME = "hub"

# Errors that mean "the database is not there right now": intake answers 451, workers back off.
UNAVAILABLE = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.ConnectionDoesNotExistError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.ConnectionFailureError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.InternalClientError,
    asyncpg.exceptions.PostgresConnectionError,
)


def _bin_dir() -> Path:
    """PostgreSQL's binaries as shipped in the pgserver wheel (found without importing it: its import has side
    effects we do not want)."""
    import importlib.util

    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("the embedded PostgreSQL needs the `pgserver` package (pip install pgserver)")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


@dataclass
class Embedded:
    """A PostgreSQL server owned by this hub, under data_dir/pg."""

    data_dir: Path

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pg"

    @property
    def socket_dir(self) -> Path:
        candidate = (self.data_dir / "run").resolve()
        # Unix socket paths are limited to 107 bytes
        if len(str(candidate / ".s.PGSQL.5432")) < 100:
            return candidate
        digest = hashlib.sha1(str(candidate).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"hub-pg-{digest}"

    def url(self, user: str = "postgres", database: str = DB_NAME) -> str:
        return f"postgresql://{user}@/{database}?host={self.socket_dir}"

    def _run_as(self) -> dict:
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                            PG_SYSTEM_USER], check=True, capture_output=True)
        return {"user": PG_SYSTEM_USER, "group": pwd.getpwnam(PG_SYSTEM_USER).pw_gid}

    def _prepare_permissions(self) -> None:
        """As root, let the `hubpg` user reach its directories and the binaries."""
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        for path in (self.pgdata, self.socket_dir):
            path.mkdir(parents=True, exist_ok=True)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            path.chmod(0o700)
            for parent in path.resolve().parents:  # traversal only (o+x), never read
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        bindir = _bin_dir()
        for parent in [bindir.parent, *bindir.parent.parents]:
            mode = parent.stat().st_mode
            if not mode & 0o001:
                parent.chmod(mode | 0o001)
        for sub in (bindir, bindir.parent / "lib", bindir.parent / "share"):
            if sub.exists():
                subprocess.run(["chmod", "-R", "o+rX", str(sub)], check=True)

    def is_running(self) -> bool:
        pidfile = self.pgdata / "postmaster.pid"
        if not pidfile.exists():
            return False
        try:
            pid = int(pidfile.read_text().split("\n", 1)[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            return False
        except PermissionError:
            return True
        return (self.socket_dir / ".s.PGSQL.5432").exists()

    def start(self) -> bool:
        """Initialise if needed and start; idempotent: True when this call started the server, False when it was
        running already. Blocking (call before the event loop or in a thread)."""
        try:
            return self._start()
        except subprocess.CalledProcessError as exc:
            err = exc.stderr.decode("utf-8", "replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
            raise DatabaseUnavailable(f"embedded PostgreSQL under {self.pgdata}: {Path(exc.cmd[0]).name} failed: "
                                      f"{' '.join(err.split())[:500]}") from None
        except OSError as exc:
            raise ConfigError(f"setting hub.data_dir: embedded PostgreSQL under {self.pgdata}: "
                              f"{exc.strerror or exc}") from None

    def _start(self) -> bool:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        run_as = self._run_as()
        self._prepare_permissions()
        self.pgdata.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if not run_as:
            self.pgdata.chmod(0o700)
            self.socket_dir.chmod(0o700)
        bindir = _bin_dir()
        if not (self.pgdata / "PG_VERSION").exists():
            subprocess.run([str(bindir / "initdb"), "-D", str(self.pgdata), "-U", "postgres", "--auth=trust",
                            "--encoding=UTF8", "--locale=C", "--no-instructions"],
                           check=True, capture_output=True, **run_as)
            conf = self.pgdata / "postgresql.conf"
            with conf.open("a") as fh:
                fh.write(
                    "\n# written by hub.db.Embedded\n"
                    "listen_addresses = ''\n"
                    "unix_socket_permissions = 0700\n"
                    "max_connections = 300\n"
                    "shared_buffers = 512MB\n"
                    "wal_buffers = 16MB\n"
                    "max_wal_size = 4GB\n"
                    "checkpoint_timeout = 15min\n"
                    "fsync = on\n"
                    "synchronous_commit = on\n"
                    "log_min_messages = warning\n"
                    "logging_collector = off\n"
                )
        if self.is_running():
            return False
        self._remove_stale_pidfile()
        proc = subprocess.run(self._start_command(120), capture_output=True, text=True, **run_as)
        if proc.returncode != 0:
            raise DatabaseUnavailable(f"embedded PostgreSQL under {self.pgdata} did not start: "
                                      f"{self.last_log_line() or proc.stderr.strip()}")
        self._ensure_database()
        return True

    def _remove_stale_pidfile(self) -> None:
        stale = self.pgdata / "postmaster.pid"
        if stale.exists() and not self.is_running():
            stale.unlink()

    def _start_command(self, wait: int) -> list[str]:
        return [str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-l", str(self.pgdata / "server.log"), "-w",
                "-t", str(wait), "-o", f"-k {self.socket_dir}", "start"]

    def launch(self) -> subprocess.Popen:
        """Start the server again without waiting (the supervisor polls the returned pg_ctl, see
        hub.supervisor.PostgresWatch)."""
        self._remove_stale_pidfile()
        return subprocess.Popen(self._start_command(60), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, **self._run_as())

    def last_log_line(self) -> str | None:
        """The last error-like line of the server log (FATAL, PANIC, ERROR), for one-line reports."""
        log = self.pgdata / "server.log"
        try:
            with log.open("rb") as fh:
                fh.seek(max(0, log.stat().st_size - 8192))
                lines = fh.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            if any(tag in line for tag in ("FATAL:", "PANIC:", "ERROR:")):
                return line.strip()[:500]
        return lines[-1].strip()[:500] if lines else None

    def _ensure_database(self) -> None:
        psql = _bin_dir() / "psql"
        base = [str(psql), "-h", str(self.socket_dir), "-U", "postgres", "-X", "-q", "-t", "-A"]
        exists = subprocess.run(base + ["-d", "postgres", "-c",
                                        f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'"],
                                capture_output=True, text=True, check=True, **self._run_as())
        if exists.stdout.strip() != "1":
            subprocess.run(base + ["-d", "postgres", "-c", f"CREATE DATABASE {DB_NAME}"],
                           capture_output=True, text=True, check=True, **self._run_as())

    def stop(self, mode: str = "fast") -> None:
        if not (self.pgdata / "PG_VERSION").exists():
            return
        subprocess.run([str(_bin_dir() / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"],
                       capture_output=True, **self._run_as())


@dataclass(frozen=True)
class Urls:
    admin: str      # migrations, maintenance
    runtime: str    # the hub's own connections
    started_embedded: bool = False    # this call started the embedded server (the caller stops it)


def urls(settings: Settings, *, start_embedded: bool = True) -> Urls:
    """Where to connect; starts the embedded server when no URL is configured."""
    if settings.database.url:
        return Urls(admin=os.environ.get("HUB_DATABASE_ADMIN_URL") or settings.database.url,
                    runtime=settings.database.url)
    emb = Embedded(settings.data_dir)
    started = emb.start() if start_embedded else False
    return Urls(admin=emb.url("postgres"), runtime=emb.url(RUNTIME_ROLE), started_embedded=started)


def describe(url: str) -> str:
    """A database URL without its password, for messages."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


async def connect(url: str, settings: Settings | None = None, *, patience: float = 30.0) -> asyncpg.Connection:
    """Connect; while the server says it is starting up or shutting down, keep trying for `patience` seconds."""
    timeout = settings.database.connect_timeout if settings else 10.0
    deadline = asyncio.get_running_loop().time() + patience
    while True:
        try:
            return await asyncpg.connect(url, timeout=timeout)
        except asyncpg.exceptions.CannotConnectNowError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc
            await asyncio.sleep(0.5)
        except UNAVAILABLE as exc:
            raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=_json_dumps, decoder=_json_loads, schema="pg_catalog")


# Text PostgreSQL cannot store: NUL (in text and in jsonb) and lone surrogates (bytes that were not UTF-8, decoded
# with surrogateescape). Every boundary that takes text from outside either refuses it or replaces it (U+FFFD).
UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable(text: str) -> str:
    """`text` with NUL and lone surrogates replaced by U+FFFD (the same object when there are none)."""
    if text.isascii() and "\x00" not in text:
        return text
    return UNSTORABLE.sub("\ufffd", text)


def _json_dumps(value) -> str:
    import json

    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)


def _json_loads(value: str):
    import json

    return json.loads(value)


async def _no_reset(conn: asyncpg.Connection) -> None:
    """The hub keeps no session state on pooled connections (no LISTEN, no session locks left behind), so the
    default reset (an extra round trip on every release) is skipped."""


async def create_pool(url: str, settings: Settings, *, min_size: int | None = None,
                      max_size: int | None = None, durable: bool = True) -> asyncpg.Pool:
    """durable=False: commits do not wait for the WAL flush (synchronous_commit off). Only for state changes
    that are redone if lost in a PostgreSQL crash (delivery outcomes, leases, processing results): a lost
    update means a message is processed or sent again (at-least-once), never lost. Intake always uses a
    durable pool: a 250 means committed to disk."""
    try:
        return await asyncpg.create_pool(
            url,
            reset=_no_reset,
            server_settings={} if durable else {"synchronous_commit": "off"},
            min_size=settings.database.pool_min if min_size is None else min_size,
            max_size=settings.database.pool_max if max_size is None else max_size,
            timeout=settings.database.connect_timeout,
            command_timeout=settings.database.command_timeout,
            init=_init_connection,
            max_inactive_connection_lifetime=60,
        )
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"cannot connect to PostgreSQL: {exc}") from exc


_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    """(number, name, sql) in order. Duplicate numbers are a packaging error."""
    found: dict[int, tuple[int, str, str]] = {}
    for entry in resources.files("hub.migrations").iterdir():
        m = _MIGRATION_NAME.match(entry.name)
        if not m:
            continue
        number = int(m.group(1))
        if number in found:
            raise ConfigError(f"two migrations numbered {number:04d}: {found[number][1]} and {entry.name}")
        found[number] = (number, entry.name, entry.read_text(encoding="utf-8"))
    return [found[k] for k in sorted(found)]


async def migrate(admin_url: str, runtime_role: str | None = RUNTIME_ROLE) -> list[str]:
    """Apply pending migrations; return the names applied. Serialised by an advisory lock."""
    conn = await connect(admin_url)
    applied_now: list[str] = []
    try:
        await conn.execute("SELECT pg_advisory_lock(727001)")
        try:
            if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
                await conn.execute(
                    "CREATE TABLE schema_migrations ("
                    " version int PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
            done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
            for number, name, sql in migration_files():
                if number in done:
                    continue
                async with conn.transaction():
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO schema_migrations (version, name) VALUES ($1, $2)",
                                       number, name)
                applied_now.append(name)
            role_missing = runtime_role and not await conn.fetchval(
                "SELECT 1 FROM pg_roles WHERE rolname = $1", runtime_role)
            if runtime_role and (applied_now or role_missing):
                await _grant_runtime(conn, runtime_role)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(727001)")
    finally:
        await conn.close()
    return applied_now


async def _grant_runtime(conn: asyncpg.Connection, role: str) -> None:
    """Create the runtime role if we may, and give it what the hub needs: DML everywhere except the audit
    tables, where it may only read and append."""
    can = await conn.fetchval("SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user")
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    if not exists:
        if not can:
            return
        await conn.execute(f'CREATE ROLE "{role}" LOGIN')
    me = await conn.fetchval("SELECT current_user")
    if me == role:
        return
    await conn.execute(f'GRANT USAGE ON SCHEMA public TO "{role}"')
    await conn.execute(f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"')
    tables = await conn.fetch(
        "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p')")
    for row in tables:
        name = row["relname"]
        if name.startswith("audit_"):
            await conn.execute(f'REVOKE UPDATE, DELETE, TRUNCATE ON "{name}" FROM "{role}"')
            await conn.execute(f'GRANT SELECT, INSERT ON "{name}" TO "{role}"')
        else:
            await conn.execute(f'GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON "{name}" TO "{role}"')
    # functions the runtime may call (e.g. partition maintenance defined SECURITY DEFINER by migrations)
    await conn.execute(f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO "{role}"')
