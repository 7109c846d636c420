"""The national authorised-domains list (liste blanche MSSanté): import, history, and the in-memory view the
intake and delivery stages consult.

Input trusted: nothing. The published XML lacks its closing root tag, so it is read with a recovering,
entity-free parser and sanity-checked: a list that is empty, truncated mid-entry or otherwise unusable never
replaces the current one. Every imported version is kept (table trust_list / trust_domain).
Settings read: none (domains the hub serves itself are passed in).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from lxml import etree

from hub.audit.store import Event, record
from hub.errors import ImportFileError

NS = "{https://listeblanche.mssante.fr/schema}"
MIN_ENTRIES = 100          # the national list has thousands; fewer means a broken download
MAX_SHRINK = 0.5           # refuse a list that drops more than half the current domains


@dataclass(frozen=True)
class Entry:
    domain: str
    operator_dn: str
    description: str
    updated: datetime | None


@dataclass(frozen=True)
class ParsedList:
    entries: list[Entry]
    generated_at: datetime | None
    sha256: str


def normalise_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".").lower()
    try:
        return domain if domain.isascii() else domain.encode("idna").decode("ascii")
    except UnicodeError:
        return domain


def _date(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None


def parse(data: bytes, source: str) -> ParsedList:
    """Parse the list; raise ImportFileError saying why it is unusable."""
    if not data.strip():
        raise ImportFileError("the file is empty", where=source)
    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True, load_dtd=False,
                             huge_tree=False, remove_comments=True)
    try:
        root = etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        raise ImportFileError(f"not XML: {exc}", where=source) from None
    if root is None or etree.QName(root).localname != "ListeBlancheMSSante":
        raise ImportFileError("not an MSSanté authorised-domains list (root element ListeBlancheMSSante expected)",
                              where=source)
    ns = NS if root.tag.startswith(NS) else ""
    entries: list[Entry] = []
    for i, dom in enumerate(root.iter(f"{ns}Domaine"), start=1):
        name = dom.findtext(f"{ns}Nom")
        dn = dom.findtext(f"{ns}DNCertificatOperateur")
        if name is None or dn is None or dom.find(f"{ns}DateMAJ") is None:
            line = getattr(dom, "sourceline", None)
            raise ImportFileError(f"entry {i} is incomplete (Nom, DNCertificatOperateur and DateMAJ are required):"
                                  " the file looks truncated", where=f"{source}:{line}" if line else source)
        if not name.strip():
            raise ImportFileError(f"entry {i} has an empty Nom", where=f"{source}:{dom.sourceline}")
        entries.append(Entry(normalise_domain(name), " ".join(dn.split()), (dom.findtext(f"{ns}Description") or
                                                                            "").strip(),
                             _date(dom.findtext(f"{ns}DateMAJ"))))
    if not entries:
        raise ImportFileError("the list has no Domaine entries", where=source)
    return ParsedList(entries, _date(root.findtext(f"{ns}DateDeGeneration")), hashlib.sha256(data).hexdigest())


@dataclass(frozen=True)
class ImportResult:
    list_id: int
    entries: int
    domains: int
    added: int
    removed: int
    unchanged_content: bool


async def import_list(conn: asyncpg.Connection, path: Path, *, force: bool = False) -> ImportResult:
    data = path.read_bytes()
    parsed = parse(data, str(path))
    if len(parsed.entries) < MIN_ENTRIES and not force:
        raise ImportFileError(f"only {len(parsed.entries)} entries (at least {MIN_ENTRIES} expected): refusing to"
                              " replace the current list (use --force for a test list)", where=str(path))
    domains = {e.domain for e in parsed.entries}
    async with conn.transaction():
        await conn.execute("LOCK TABLE trust_list IN SHARE ROW EXCLUSIVE MODE")
        current = await conn.fetchrow("SELECT id, sha256 FROM trust_list WHERE current")
        old: set[str] = set()
        if current:
            old = {r["domain"] for r in await conn.fetch(
                "SELECT DISTINCT domain FROM trust_domain WHERE list_id = $1", current["id"])}
            if not force and old and len(domains) < len(old) * (1 - MAX_SHRINK):
                raise ImportFileError(f"the new list has {len(domains)} domains against {len(old)} now: refusing a"
                                      " shrink of more than half (use --force if it is intended)", where=str(path))
        list_id = await conn.fetchval(
            "INSERT INTO trust_list (generated_at, source, sha256, entries, domains) VALUES ($1, $2, $3, $4, $5)"
            " RETURNING id", parsed.generated_at, str(path), parsed.sha256, len(parsed.entries), len(domains))
        await conn.copy_records_to_table(
            "trust_domain", columns=["list_id", "position", "domain", "operator_dn", "description", "updated"],
            records=[(list_id, i, e.domain, e.operator_dn, e.description, e.updated)
                     for i, e in enumerate(parsed.entries, start=1)])
        await conn.execute("UPDATE trust_list SET current = false WHERE current")
        await conn.execute("UPDATE trust_list SET current = true WHERE id = $1", list_id)
        result = ImportResult(list_id, len(parsed.entries), len(domains), len(domains - old), len(old - domains),
                              bool(current and current["sha256"] == parsed.sha256))
        await record(conn, Event("trust_list_imported", facts={
            "list_id": list_id, "source": str(path), "sha256": parsed.sha256, "entries": result.entries,
            "domains": result.domains, "added": result.added, "removed": result.removed}))
        await conn.execute("NOTIFY hub_trust")
    return result


class TrustSpace:
    """The current authorised domains, with their operator certificate DNs, held in memory per process and
    refreshed when the current list changes (checked at most every `refresh` seconds)."""

    def __init__(self, hub_domains: list[str], local_domains: list[str], refresh: float = 10.0):
        self.hub_domains = frozenset(normalise_domain(d) for d in hub_domains)
        self.local_domains = frozenset(normalise_domain(d) for d in local_domains)
        self.refresh = refresh
        self.list_id: int | None = None
        self._dns: dict[str, frozenset[str]] = {}
        self._checked = 0.0

    def load_rows(self, list_id: int | None, rows) -> None:
        dns: dict[str, set[str]] = {}
        for r in rows:
            dns.setdefault(r["domain"], set()).add(r["operator_dn"])
        self._dns = {d: frozenset(v) for d, v in dns.items()}
        self.list_id = list_id

    async def load(self, conn: asyncpg.Connection) -> None:
        list_id = await conn.fetchval("SELECT id FROM trust_list WHERE current")
        self._checked = time.monotonic()
        if list_id == self.list_id:
            return
        rows = await conn.fetch("SELECT domain, operator_dn FROM trust_domain WHERE list_id = $1", list_id) \
            if list_id else []
        self.load_rows(list_id, rows)

    async def maybe_refresh(self, pool: asyncpg.Pool) -> None:
        if time.monotonic() - self._checked >= self.refresh:
            self._checked = time.monotonic()
            async with pool.acquire() as conn:
                await self.load(conn)

    def is_trusted(self, domain: str) -> bool:
        return normalise_domain(domain) in self._dns

    def is_hub_domain(self, domain: str) -> bool:
        return normalise_domain(domain) in self.hub_domains

    def is_local(self, domain: str) -> bool:
        return normalise_domain(domain) in self.local_domains

    def operator_dns(self, domain: str) -> frozenset[str]:
        return self._dns.get(normalise_domain(domain), frozenset())

    def __len__(self) -> int:
        return len(self._dns)


def register(sub) -> None:
    p = sub.add_parser("trust", help="the national authorised-domains list (liste blanche)")
    s = p.add_subparsers(dest="trust_command", metavar="ACTION")
    s.required = True
    imp = s.add_parser("import", help="import listeblanchemssante.xml (keeps previous versions)")
    imp.add_argument("file", type=Path)
    imp.add_argument("--force", action="store_true", help="accept a small or shrinking list (test lists)")
    imp.set_defaults(run=_cmd_import)
    st = s.add_parser("status", help="show the current list and the history")
    st.set_defaults(run=_cmd_status)


async def _cmd_import(args, ctx) -> int:
    if not args.file.exists():
        raise ImportFileError("no such file", where=str(args.file))
    async with ctx.connection() as conn:
        r = await import_list(conn, args.file, force=args.force)
    print(f"imported {args.file}: {r.entries} entries, {r.domains} domains (+{r.added} -{r.removed})"
          f"{' (same content as before)' if r.unchanged_content else ''}; list version {r.list_id} is current")
    return 0


async def _cmd_status(args, ctx) -> int:
    async with ctx.connection() as conn:
        rows = await conn.fetch("SELECT * FROM trust_list ORDER BY id DESC LIMIT 20")
    for r in rows:
        print(f"{'*' if r['current'] else ' '} v{r['id']} imported {r['imported_at']:%Y-%m-%d %H:%M} "
              f"generated {r['generated_at']} {r['entries']} entries {r['domains']} domains {r['source']}")
    return 0
