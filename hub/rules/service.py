"""The running hub's rule set: validation, activation, hot reload and cross-process pick-up.

`RulesService.current` is the compiled `RuleSet` in force. It is replaced by a single reference assignment, so a
caller that takes `rs = service.current` once per message evaluates every recipient of that message under one
version. An invalid rule set never replaces it: the error is kept in `last_error` (for /healthz) and logged as
`rules_reload_failed`.

Sources of change, all ending in `reload` or `refresh`:
  - start-up (`start`), SIGHUP (the app calls `reload`), `hub rules reload` / `rollback` (write the database),
  - `watch(pool)`: every `rules.watch_interval` seconds, re-reads the files when their names, sizes or mtimes
    changed (only if `rules.watch`), then polls `max(version)` of `rule_set` to pick up versions activated by other
    processes (one index lookup per interval). Activations also NOTIFY `hub_rules` for anyone who prefers LISTEN.

Settings read: rules.dir, rules.watch, rules.watch_interval.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection

import asyncpg
import structlog

from hub.db import UNAVAILABLE
from hub.errors import ConfigError
from hub.rules import store
from hub.rules.engine import RuleSet
from hub.rules.loader import SUFFIXES, RulesInvalid, compile_files, read_dir
from hub.rules.yamlnodes import RuleError
from hub.settings import RulesSection

log = structlog.get_logger("hub.rules")


@dataclass(frozen=True)
class ReloadResult:
    ok: bool                            # the files were valid
    changed: bool                       # a different version is now current in this process
    version: int | None                 # the version in force after the call
    created: bool = False               # a new version was stored in the database
    errors: tuple[RuleError, ...] = ()


class RulesService:
    """Holds the current rule set of one hub process. Build one in app.py; pass it to intake and the pipeline."""

    def __init__(self, settings: RulesSection, transforms: Collection[str], *, version_gauge: Any = None,
                 error_gauge: Any = None):
        self.settings = settings
        self.transforms = frozenset(transforms)
        self.current: RuleSet | None = None
        self.last_error: str | None = None
        self._version_gauge = version_gauge     # e.g. Gauge("hub_rules_version")
        self._error_gauge = error_gauge         # e.g. Gauge("hub_rules_reload_failed"): 1 while files are invalid
        self._lock = asyncio.Lock()
        self._disk_signature: tuple | None = None

    # --- activation ------------------------------------------------------------------------------------------

    async def start(self, conn: asyncpg.Connection, *, actor: str = "startup") -> RuleSet:
        """At start-up: activate the files if valid (and new); else run the last good version from the database."""
        await self.reload(conn, actor=actor, reason="startup")
        if self.current is None:
            await self.refresh(conn)
        if self.current is None:
            raise ConfigError(f"no usable routing rules: {self.last_error}")
        return self.current

    async def reload(self, conn: asyncpg.Connection, *, actor: str, reason: str = "reload") -> ReloadResult:
        """Validate the files of rules.dir; if valid and different, store them as a new version and switch."""
        async with self._lock:
            self._disk_signature = disk_signature(self.settings.dir)
            try:
                files, candidate = await asyncio.to_thread(self._load_dir)
            except RulesInvalid as exc:
                self._failed(exc.errors, source=self.settings.dir)
                return ReloadResult(False, False, self._version(), errors=exc.errors)
            version, created = await store.activate(conn, files, actor=actor, reason=reason)
            changed = self._swap(candidate, version)
            self.last_error = None
            if self._error_gauge is not None:
                self._error_gauge.set(0)
            log.info("rules_activated" if created else "rules_reloaded", version=version, actor=actor,
                     created=created, rules=len(candidate.rules))
            return ReloadResult(True, changed, version, created)

    async def refresh(self, conn: asyncpg.Connection) -> bool:
        """Switch to the database's current version if another process activated a different one."""
        latest = await store.current_version(conn)
        if latest is None or (self.current is not None and self.current.version == latest):
            return False
        async with self._lock:
            stored = await store.get(conn, latest)
            if stored is None or (self.current is not None and self.current.version == stored.version):
                return False
            try:
                candidate = await asyncio.to_thread(compile_files, stored.files, self.transforms)
            except RulesInvalid as exc:
                self._failed(exc.errors, source=f"version {stored.version} (database)")
                return False
            return self._swap(candidate, stored.version)

    def _load_dir(self) -> tuple[dict[str, str], RuleSet]:
        files = read_dir(self.settings.dir)
        return files, compile_files(files, self.transforms)

    def _swap(self, candidate: RuleSet, version: int) -> bool:
        if self.current is not None and self.current.version == version:
            return False
        self.current = candidate.with_version(version)     # the one atomic step
        if self._version_gauge is not None:
            self._version_gauge.set(version)
        log.info("rules_switched", version=version, content_hash=candidate.content_hash[:12])
        return True

    def _failed(self, errors: tuple[RuleError, ...], *, source: str) -> None:
        shown = "; ".join(str(e) for e in errors[:3]) + (f" (+{len(errors) - 3} more)" if len(errors) > 3 else "")
        self.last_error = f"{source}: {shown}"
        if self._error_gauge is not None:
            self._error_gauge.set(1)
        log.error("rules_reload_failed", source=source, kept_version=self._version(),
                  errors=[str(e) for e in errors[:50]])

    def _version(self) -> int | None:
        return self.current.version if self.current is not None else None

    def status(self) -> dict:
        """For /healthz: the version in force and the last reload error, if any."""
        return {"version": self._version(), "rules": len(self.current.rules) if self.current else 0,
                "needs_content": bool(self.current and self.current.needs_content), "last_error": self.last_error}

    # --- watching ----------------------------------------------------------------------------------------------

    def disk_changed(self) -> bool:
        return disk_signature(self.settings.dir) != self._disk_signature

    async def watch(self, pool: asyncpg.Pool) -> None:
        """Run until cancelled: reload when the files change (rules.watch), pick up other processes' versions."""
        while True:
            await asyncio.sleep(self.settings.watch_interval)
            try:
                async with pool.acquire() as conn:
                    if self.settings.watch and self.disk_changed():
                        await self.reload(conn, actor="watch", reason="watch")
                    await self.refresh(conn)
            except UNAVAILABLE as exc:
                log.warning("rules_watch_failed", error=str(exc) or type(exc).__name__)
            except asyncpg.PostgresError as exc:
                log.warning("rules_watch_failed", error=str(exc))


def disk_signature(directory: str | os.PathLike) -> tuple:
    """Names, sizes and mtimes of the rule files: cheap to compute every few seconds."""
    try:
        entries = sorted(os.scandir(directory), key=lambda e: e.name)
    except OSError:
        return ()
    out = []
    for e in entries:
        if e.name.endswith(SUFFIXES) and not e.name.startswith("."):
            try:
                st = e.stat()
            except OSError:
                continue
            out.append((e.name, st.st_size, st.st_mtime_ns))
    return tuple(out)


async def rollback(conn: asyncpg.Connection, version: int, directory: str | os.PathLike,
                   transforms: Collection[str], *, actor: str) -> tuple[int, bool]:
    """Activate the content of a stored `version` as a new current version, and write its files back to the
    rules directory so that the disk and the database agree (otherwise a watcher would re-activate the files).
    Returns (new version, created). Refuses content that no longer validates (e.g. a transform since removed)."""
    stored = await store.get(conn, version)
    if stored is None:
        raise ConfigError(f"rules version {version} does not exist")
    compile_files(stored.files, transforms)            # raises RulesInvalid
    async with conn.transaction():
        result = await store.activate(conn, stored.files, actor=actor, reason="rollback", rollback_of=version)
        write_dir(directory, stored.files)             # a failure here rolls the activation back
    return result


def write_dir(directory: str | os.PathLike, files: dict[str, str] | Any) -> None:
    """Make the rule files of `directory` exactly `files` (other files, such as README.md, are left alone).
    Each file is written to a temporary name and renamed, so a watcher never reads half a file."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        if "/" in name or name.startswith("."):
            raise ConfigError(f"refusing to write rule file {name!r}")
        tmp = root / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, root / name)
    for entry in root.iterdir():
        if entry.suffix in SUFFIXES and entry.name not in files and not entry.name.startswith("."):
            entry.unlink()
