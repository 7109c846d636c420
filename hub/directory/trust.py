"""The national authorised-domains list (liste blanche MSSanté): import, history, and the in-memory view the
intake and delivery stages consult.

Input trusted: nothing. The file is parsed strictly (lxml, no DTD, no entities, no network): any XML damage refuses
it, with `file:line:column` and the parser's reason. The one defect tolerated is the published file's own: it ends
after `</ListeDomaines>` without the closing `</ListeBlancheMSSante>` (the file is then parsed again with that tag
added, and must be well-formed). So a list truncated anywhere else (after a `</Domaine>`, inside an element or an
attribute) is refused; so is a DOCTYPE (no entity declarations in the trust anchor), another root element or
namespace, a missing or undated `ListeDomaines`. An entry whose `Nom` is not a domain name, or without an operator
DN or `DateMAJ`, is skipped and reported (the 2025-03-13 file has one: `sessad@ase.ditepbeziers.mssante.fr`); more
than MAX_SKIPPED such entries refuse the file.
Replacing the current list: refused (unless `--force`) when the new list has fewer than MIN_ENTRIES entries, or
when it removes more than `trust.max_removed_ratio` (default 5 %) of the current domains; `--sha256` checks the
file against the checksum ANS publishes beside it. Every imported version is kept (table trust_list /
trust_domain). Settings read: trust.max_removed_ratio (passed in); the domains the hub serves itself.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import asyncpg
from lxml import etree

from hub.audit.store import Event, record
from hub.errors import ImportFileError

NS = "{https://listeblanche.mssante.fr/schema}"
ROOT = "ListeBlancheMSSante"
MIN_ENTRIES = 100          # the national list has thousands; fewer means a broken download
MAX_REMOVED_RATIO = 0.05   # default of trust.max_removed_ratio
MAX_SKIPPED = 10           # unusable entries tolerated (skipped and reported); more refuse the file
_LABEL = r"(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})+")
_DOCTYPE = re.compile(rb"<!\s*(?:DOCTYPE|ENTITY)", re.IGNORECASE)


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
    skipped: tuple[str, ...] = ()      # "line N: why" for each entry left out


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


def _xml(data: bytes) -> etree._Element:
    # (not collect_ids=False: with it, lxml 6.1 / libxml2 2.14 reads an external DTD subset despite load_dtd=False)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True)
    return etree.fromstring(data, parser)


def _well_formed(data: bytes, source: str) -> etree._Element:
    """The root element, strictly parsed; the missing closing root tag of the published file is the only repair."""
    try:
        return _xml(data)
    except etree.XMLSyntaxError as exc:
        first = exc
    try:
        return _xml(data + f"</{ROOT}>".encode())
    except etree.XMLSyntaxError:
        pass
    line, column = first.position if first.position else (0, 0)
    end_line, end_column = data.count(b"\n") + 1, len(data) - data.rfind(b"\n")      # where the data stops
    why = "the file is truncated" if (line, column) >= (end_line, end_column - 1) else "the file is damaged"
    raise ImportFileError(f"{why}: {first.msg}", where=f"{source}:{line}:{column}") from None


def parse(data: bytes, source: str) -> ParsedList:
    """Parse the list; raise ImportFileError saying why it is unusable."""
    if not data.strip():
        raise ImportFileError("the file is empty", where=source)
    declaration = _DOCTYPE.search(data)          # refused before parsing: nothing in it is ever read
    if declaration:
        line = data.count(b"\n", 0, declaration.start()) + 1
        raise ImportFileError("a DOCTYPE or ENTITY declaration is not allowed in the authorised-domains list",
                              where=f"{source}:{line}")
    root = _well_formed(data, source)
    if root.tag != f"{NS}{ROOT}":
        raise ImportFileError(f"not an MSSanté authorised-domains list (root element {ROOT} in namespace "
                              f"{NS[1:-1]} expected, found {root.tag})", where=f"{source}:{root.sourceline}")
    lists = root.findall(f"{NS}ListeDomaines")
    if len(lists) != 1:
        raise ImportFileError(f"expected one ListeDomaines element, found {len(lists)}",
                              where=f"{source}:{root.sourceline}")
    generated = root.find(f"{NS}DateDeGeneration")
    if generated is None or _date(generated.text) is None:
        raise ImportFileError("DateDeGeneration is missing or not a date",
                              where=f"{source}:{(generated if generated is not None else root).sourceline}")
    entries: list[Entry] = []
    skipped: list[str] = []
    for dom in lists[0].findall(f"{NS}Domaine"):
        name = " ".join((dom.findtext(f"{NS}Nom") or "").split())
        dn = " ".join((dom.findtext(f"{NS}DNCertificatOperateur") or "").split())
        updated = _date(dom.findtext(f"{NS}DateMAJ"))
        domain = normalise_domain(name)
        if not _DOMAIN.fullmatch(domain) or len(domain) > 253:
            skipped.append(f"line {dom.sourceline}: Nom {name[:80]!r} is not a domain name")
        elif "=" not in dn:
            skipped.append(f"line {dom.sourceline}: {domain} has no operator certificate DN")
        elif updated is None:
            skipped.append(f"line {dom.sourceline}: {domain} has no valid DateMAJ")
        else:
            entries.append(Entry(domain, dn, (dom.findtext(f"{NS}Description") or "").strip(), updated))
    if len(skipped) > MAX_SKIPPED:
        raise ImportFileError(f"{len(skipped)} unusable Domaine entries (at most {MAX_SKIPPED} are skipped): "
                              + "; ".join(skipped[:3]), where=source)
    if not entries:
        raise ImportFileError("the list has no Domaine entries", where=source)
    return ParsedList(entries, _date(generated.text), hashlib.sha256(data).hexdigest(), tuple(skipped))


@dataclass(frozen=True)
class ImportResult:
    list_id: int
    entries: int
    domains: int
    added: int
    removed: int
    unchanged_content: bool
    skipped: tuple[str, ...] = ()


async def import_list(conn: asyncpg.Connection, path: Path, *, force: bool = False, sha256: str | None = None,
                      max_removed_ratio: float = MAX_REMOVED_RATIO) -> ImportResult:
    data = path.read_bytes()
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256.strip().lower():
        raise ImportFileError(f"SHA-256 {hashlib.sha256(data).hexdigest()} differs from the expected {sha256.strip()}"
                              " (incomplete or altered download)", where=str(path))
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
            gone = old - domains
            if not force and len(gone) > len(old) * max_removed_ratio:
                raise ImportFileError(
                    f"the new list removes {len(gone)} of the {len(old)} current domains ({len(gone) / len(old):.1%},"
                    f" more than trust.max_removed_ratio = {max_removed_ratio:.1%}), e.g. "
                    f"{', '.join(sorted(gone)[:3])}: refused (check the file; use --force if it is intended)",
                    where=str(path))
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
                              bool(current and current["sha256"] == parsed.sha256), parsed.skipped)
        await record(conn, Event("trust_list_imported", facts={
            "list_id": list_id, "source": str(path), "sha256": parsed.sha256, "entries": result.entries,
            "domains": result.domains, "added": result.added, "removed": result.removed,
            "skipped": list(parsed.skipped), "forced": force}))
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

    def delivers_to(self, domain: str) -> bool:
        """A destination the delivery stage delivers to: an authorised MSSanté domain or a local one. A
        `delivery.transport` route alone is no permission."""
        return self.is_trusted(domain) or self.is_local(domain)

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
    imp.add_argument("--force", action="store_true",
                     help="accept a small list (test lists) or one that removes more than trust.max_removed_ratio"
                          " of the current domains")
    imp.add_argument("--sha256", metavar="HEX", help="the file's expected SHA-256 (the `checksum` ANS publishes)")
    imp.set_defaults(run=_cmd_import)
    st = s.add_parser("status", help="show the current list and the history")
    st.set_defaults(run=_cmd_status)


async def _cmd_import(args, ctx) -> int:
    if not args.file.exists():
        raise ImportFileError("no such file", where=str(args.file))
    async with ctx.connection() as conn:
        r = await import_list(conn, args.file, force=args.force, sha256=args.sha256,
                              max_removed_ratio=ctx.settings.trust.max_removed_ratio)
    for why in r.skipped:
        print(f"{args.file}: skipped entry at {why}", file=sys.stderr)
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
