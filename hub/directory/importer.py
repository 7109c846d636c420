"""Import of a national directory file: open (zip or text), read (hub.directory.formats), COPY into the inactive
slot, check, switch the current generation, record history and audit — or refuse and leave the directory as is.

Stages, in order:
  1. open the file; a zip is read in place, choosing the member named like a directory file;
  2. read the header: it decides the source (mssante / ps), or the file is refused;
  3. take the import lock, empty the inactive slot (short transaction);
  4. in ONE transaction: stream the lines (parsed in a worker thread, batch by batch, never the whole file in
     memory) into COPY; refuse if the last line is truncated, if too many lines are malformed or if the file
     would shrink the directory too much; count added / removed / changed; switch `directory_current`; write the
     `directory_import` row and the `directory_imported` audit event. Readers see the old generation until
     that transaction commits, then the new one.
A refusal rolls the transaction back: the current generation stays; the attempt is kept as a `refused` import
row and a `directory_import_refused` audit event.

Input trusted: none (see formats). Settings read (passed in by the caller): directory.max_rejected_ratio,
directory.max_shrink_ratio.
"""

from __future__ import annotations

import asyncio
import io
import os
import time
import zipfile
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import AsyncIterator, BinaryIO

import asyncpg

from hub.audit.store import Event, record
from hub.db import UNAVAILABLE
from hub.directory import store
from hub.directory.formats import Reader
from hub.errors import DatabaseUnavailable, ImportFileError, TemporaryError

REJECT_FLOOR = 10                        # this many malformed lines are always tolerated
# what reading a damaged file raises: corrupt zip (bad CRC, bad deflate data, truncated), encrypted or unsupported
# zip member (zipfile raises RuntimeError / NotImplementedError for those), I/O errors
_UNREADABLE = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError)
_MEMBER_PREFIXES = ("extraction_correspondance_mssante", "ps_libreacces_personne_activite")


@dataclass(frozen=True)
class ImportResult:
    import_id: int
    source: str                          # "mssante" | "ps"
    file: str
    sha256: str
    lines: int
    loaded: int
    added: int
    removed: int
    changed: int
    rejected: int
    duplicates: int
    rejected_lines: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def facts(self) -> dict:
        return asdict(self)


class _ZipMember(io.BufferedReader):
    """A zip member read through a large buffer; closing it closes the archive too."""

    def __init__(self, zf: zipfile.ZipFile, member: zipfile.ZipInfo):
        self._zf = zf
        super().__init__(zf.open(member), buffer_size=1 << 20)  # type: ignore[arg-type]

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._zf.close()


def open_file(path: str | os.PathLike) -> tuple[BinaryIO, str]:
    """A buffered binary stream of the directory text and the name to use in messages ("x.zip:member.txt")."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            zf = zipfile.ZipFile(path)
            members = [m for m in zf.infolist() if not m.is_dir()]
            named = [m for m in members if Path(m.filename).name.lower().startswith(_MEMBER_PREFIXES)]
            chosen = named if named else members
            if len(chosen) != 1:
                zf.close()
                raise ImportFileError(f"zip holds {len(chosen)} candidate files, expected one "
                                      "Extraction_Correspondance_MSSante or PS_LibreAcces_Personne_activite",
                                      where=str(path))
            member = chosen[0]
            if member.flag_bits & 0x1:
                zf.close()
                raise ImportFileError(f"zip member {member.filename} is encrypted (password protected): not the"
                                      " file as published", where=str(path))
            return _ZipMember(zf, member), f"{path.name}:{member.filename}"
        return open(path, "rb", buffering=1 << 20), path.name
    except FileNotFoundError:
        raise ImportFileError("file not found", where=str(path)) from None
    except _UNREADABLE as exc:
        raise ImportFileError(f"cannot read: {exc}", where=str(path)) from None


def _read_header(path: str | os.PathLike) -> Reader:
    stream, name = open_file(path)
    try:
        return Reader(stream, name)
    except _UNREADABLE as exc:
        stream.close()
        raise ImportFileError(f"cannot read: {exc}", where=f"{name}:1") from None
    except BaseException:
        stream.close()
        raise


async def _rows(reader: Reader, batch_size: int) -> AsyncIterator[tuple]:
    while True:
        try:
            batch = await asyncio.to_thread(reader.batch, batch_size)
        except _UNREADABLE as exc:            # corrupt or encrypted zip member, read error
            raise ImportFileError(f"cannot read: {exc}",
                                  where=f"{reader.name}:{reader.lineno}") from None
        if not batch:
            return
        for row in batch:
            yield row


async def import_file(conn: asyncpg.Connection, path: str | os.PathLike, *, max_rejected_ratio: float = 0.01,
                      max_shrink_ratio: float = 0.5, force: bool = False, batch_size: int = 5000,
                      timeout: float = 900.0) -> ImportResult:
    """Import one file (see the module docstring). Raises ImportFileError when refused (nothing changed),
    TemporaryError when another import holds the lock or the database fails. `timeout` bounds the COPY."""
    started = time.monotonic()
    try:
        reader = await asyncio.to_thread(_read_header, path)
    except ImportFileError as exc:      # unknown source: no import row, but the attempt is audited
        await record(conn, Event(event="directory_import_refused", facts={"file": str(path), "reason": str(exc)}))
        raise
    source = reader.kind
    try:
        if not await store.try_lock(conn):
            raise TemporaryError("another directory import is running; try again when it has finished")
        try:
            return await _load(conn, reader, source, started, max_rejected_ratio=max_rejected_ratio,
                               max_shrink_ratio=max_shrink_ratio, force=force, batch_size=batch_size,
                               timeout=timeout)
        finally:
            if not conn.is_closed():
                await store.unlock(conn)
    except UNAVAILABLE as exc:
        raise DatabaseUnavailable(f"directory import: {exc}") from exc
    finally:
        reader.stream.close()


async def _load(conn: asyncpg.Connection, reader: Reader, source: str, started: float, *,
                max_rejected_ratio: float, max_shrink_ratio: float, force: bool, batch_size: int,
                timeout: float) -> ImportResult:
    live = await store.current(conn, source)
    target = store.other(live["slot"])
    import_id = await store.begin_import(conn, source, reader.name, target)
    try:
        await store.truncate_slot(conn, source, target)
        async with conn.transaction():
            await store.copy_rows(conn, store.slot_table(store.TABLES[source][0], target), reader.columns,
                                  _rows(reader, batch_size), timeout=timeout)
            st = reader.stats
            if st.rejected > REJECT_FLOOR and st.rejected > max_rejected_ratio * st.lines:
                raise ImportFileError(
                    f"{st.rejected} of {st.lines} lines malformed (more than {max_rejected_ratio:.1%}); first at "
                    f"lines {', '.join(map(str, st.rejected_lines))}",
                    where=f"{reader.name}:{st.rejected_lines[0]}")
            if source == "ps":
                await store.derive_ps(conn, target)
            loaded = await store.slot_count(conn, source, target)
            previous = live["loaded"] or 0
            if not force and previous and loaded < (1 - max_shrink_ratio) * previous:
                raise ImportFileError(
                    f"would shrink the directory from {previous} to {loaded} entries (more than "
                    f"{max_shrink_ratio:.0%}); check the file, or import with --force",
                    where=f"{reader.name}:{reader.lineno}")
            await store.analyze(conn, source, target)
            added, removed, changed = await store.diff(conn, source, live["slot"], target)
            result = ImportResult(
                import_id=import_id, source=source, file=reader.name, sha256=reader.sha256.hexdigest(),
                lines=st.lines, loaded=loaded, added=added, removed=removed, changed=changed,
                rejected=st.rejected, duplicates=st.duplicates, rejected_lines=list(st.rejected_lines),
                seconds=round(time.monotonic() - started, 3))
            await store.switch(conn, source, target, import_id)
            await store.finish_import(conn, import_id, "done", **{k: v for k, v in result.facts().items()
                                                                  if k not in ("import_id", "source", "file",
                                                                               "seconds")})
            await record(conn, Event(event="directory_imported", facts=result.facts()))
        return result
    except ImportFileError as exc:
        await _refused(conn, import_id, reader, str(exc))
        raise
    except (asyncpg.PostgresError, asyncio.TimeoutError) as exc:
        if not conn.is_closed():
            await _failed(conn, import_id, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, asyncpg.exceptions.LockNotAvailableError):
            raise TemporaryError("the directory's inactive slot stayed locked; try again") from exc
        if isinstance(exc, asyncio.TimeoutError):
            raise TemporaryError(f"directory import did not finish within {timeout:.0f} s") from exc
        raise
    except asyncio.CancelledError:
        if not conn.is_closed():
            await asyncio.shield(_failed(conn, import_id, "cancelled"))
        raise


async def _refused(conn: asyncpg.Connection, import_id: int, reader: Reader, message: str) -> None:
    st = reader.stats
    async with conn.transaction():
        await store.finish_import(conn, import_id, "refused", message=message, lines=st.lines,
                                  rejected=st.rejected, duplicates=st.duplicates,
                                  rejected_lines=list(st.rejected_lines), sha256=reader.sha256.hexdigest())
        await record(conn, Event(event="directory_import_refused",
                                 facts={"import_id": import_id, "file": reader.name, "reason": message,
                                        "lines": st.lines, "rejected": st.rejected}))


async def _failed(conn: asyncpg.Connection, import_id: int, message: str) -> None:
    await store.finish_import(conn, import_id, "failed", message=message)
