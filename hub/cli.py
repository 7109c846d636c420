"""The `hub` command: serve, db, accounts, trust, queue, directory, rules, transform, audit, tokens, revocation.

Each feature package contributes its subcommands through `hub/<package>/cli.py: register(subparsers)`; a subcommand
sets `run=<async function(args, ctx) -> int>`. Errors: HubError subclasses print `hub: error: ...` on stderr and exit
2 for bad input or configuration, 1 for anything else; 0 on success; 141 when the output pipe closed (`| head`).
`--config FILE` is accepted before or after the subcommand. Run as root, a command first becomes the owner of the
data directory (hub.privileges), so it never changes the owner or permissions of a running hub's files; a command
that had to start the embedded PostgreSQL stops it before exiting (a running hub's server is used as it is).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import AsyncIterator

import asyncpg

from hub import clihelp, db, privileges, settings as settings_mod
from hub.errors import ConfigError, HubError, InputError
from hub.settings import Settings


@dataclass
class Context:
    """What a subcommand gets: settings and database access (the embedded server is started on first use)."""

    settings: Settings
    _urls: db.Urls | None = field(default=None, repr=False)
    _migrated: bool = field(default=False, repr=False)

    def urls(self) -> db.Urls:
        if self._urls is None:
            self._urls = db.urls(self.settings)
        return self._urls

    def close(self) -> None:
        """Stop the embedded PostgreSQL if this command started it (a running hub's server is left alone)."""
        if self._urls is not None and self._urls.started_embedded:
            db.Embedded(self.settings.data_dir).stop()

    async def ensure_migrated(self) -> None:
        if not self._migrated:
            await db.migrate(self.urls().admin)
            self._migrated = True

    @contextlib.asynccontextmanager
    async def connection(self, *, admin: bool = False) -> AsyncIterator[asyncpg.Connection]:
        await self.ensure_migrated()
        urls = self.urls()
        conn = await db.connect(urls.admin if admin else urls.runtime, self.settings)
        await db._init_connection(conn)
        try:
            yield conn
        finally:
            await conn.close()

    async def pool(self, **kwargs) -> asyncpg.Pool:
        await self.ensure_migrated()
        return await db.create_pool(self.urls().runtime, self.settings, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description="Regional MSSanté interoperability hub")
    parser.add_argument("--config", help="TOML configuration file (default: $HUB_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    from hub import app
    from hub.audit import cli as audit_cli
    from hub.directory import cli as directory_cli, trust
    from hub.intake import cli as intake_cli
    from hub.queue import cli as queue_cli
    from hub.revocation import cli as revocation_cli
    from hub.rules import cli as rules_cli
    from hub.transform import cli as transform_cli

    from hub import backup, quickstart

    for package in (app, quickstart, intake_cli, trust, queue_cli, directory_cli, rules_cli, audit_cli,
                    revocation_cli, transform_cli):
        package.register(sub)

    dbp = sub.add_parser("db", help="database maintenance")
    dbsub = dbp.add_subparsers(dest="db_command", metavar="ACTION")
    dbsub.required = True
    mig = dbsub.add_parser("migrate", help="apply pending migrations")
    mig.set_defaults(run=_cmd_migrate)
    backup.register(dbsub)
    clihelp.apply(parser)
    return parser


async def _cmd_migrate(args, ctx: Context) -> int:
    applied = await db.migrate(ctx.urls().admin)
    ctx._migrated = True
    print(f"applied {len(applied)} migration(s)" + (": " + ", ".join(applied) if applied else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "serve" in argv and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        # before prometheus_client is first imported: metrics of all `hub serve` processes are aggregated
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hub-metrics-")
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = None
    user = None
    try:
        settings = settings_mod.load(getattr(args, "config", None))
        user = privileges.drop_to_data_dir_owner(settings)
        ctx = Context(settings)
        code = args.run(args, ctx) if getattr(args, "sync", False) else asyncio.run(args.run(args, ctx))
        sys.stdout.flush()          # here, so that a closed pipe is handled below and not at interpreter exit
        return code
    except (ConfigError, InputError) as exc:
        return _error(args, exc, 2)
    except HubError as exc:
        return _error(args, exc, 1)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `hub ... | head`: the reader left; end quietly (no traceback, nothing more flushed into the pipe)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except OSError as exc:
        if exc.filename is None:
            raise
        # a file named on the command line that cannot be read or written (`hub db backup /missing/dir/x.dump`)
        as_user = f" (the command runs as {user}, the owner of hub.data_dir)" if user else ""
        return _error(args, InputError(f"{exc.filename}: {exc.strerror}{as_user}"), 2)
    finally:
        if ctx is not None:
            ctx.close()


def _error(args, exc: Exception, code: int) -> int:
    if args.command == "serve":             # a service's output: the same JSON line as the other start-up checks
        from hub import app, observability

        observability.configure_logging(json=not sys.stderr.isatty())
        return app._startup_failed(exc, code)
    print(f"hub: error: {exc}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
