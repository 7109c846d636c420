"""Reading the national directory files, line by line, into rows ready for COPY.

Accepted (MSSANTE.md §4.1, §4.2), recognised by their header line, never by their file name:

* `Extraction_Correspondance_MSSante`: UTF-8, `|`-separated, 31 columns read BY POSITION (labels vary between
  versions and are only checked loosely: first "Type de BAL", second "Adresse BAL"); one trailing empty column
  is tolerated. The address is the only key: a repeated address keeps its first line (counted as duplicate).
* `PS_LibreAcces_Personne_activite`: `|`-separated with a trailing `|`, read BY HEADER NAME (48- and 56-column
  versions, drift allowed); UTF-8, with a cp1252 fallback per line (the encoding is not documented).

Input is untrusted: a line with the wrong number of columns, undecodable bytes, a NUL, or no usable key (address /
national id) is rejected and counted, and the import goes on; the caller decides when too many is too many. The
file as a whole is refused (ImportFileError with "file:line") when the header is not recognised, when there is no
data line, or when the LAST line is truncated (no final newline, or the wrong number of columns): the sign of an
interrupted download. Reads no settings. Pure and blocking: run it off the event loop (hub.directory.importer).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import BinaryIO, Callable

from hub.directory.normalize import address as norm_address, fold, structure_ids
from hub.errors import ImportFileError

MSSANTE_HEADER = [
    "Type de BAL", "Adresse BAL", "Type Identifiant PP", "Identifiant PP", "Identification nationale PP",
    "Type identifiant structure", "Identification Structure", "Service de rattachement", "Civilité d'exercice",
    "Nom d'exercice", "Prénom d'exercice", "Catégorie profession", "Libellé de catégorie profession",
    "Code Profession", "Libellé Profession", "Code savoir-faire", "Libellé savoir-faire", "Dématérialisation",
    "Raison Sociale structure BAL", "Enseigne commerciale structure BAL", "L2COMPLEMENTLOCALISATION",
    "L3COMPLEMENTDISTRIBUTION", "L4NUMEROVOIE", "L4COMPLEMENTNUMEROVOIE", "NL4TYPEVOIE", "L4LIBELLEVOIE",
    "L5LIEUDITMENTION", "L6LIGNEACHEMINEMENT", "Code postal", "Département", "Pays",
]

PS_HEADER_56 = [
    "Type d'identifiant PP", "Identifiant PP", "Identification nationale PP", "Code civilité d'exercice",
    "Libellé civilité exercice", "Code civilité", "Libellé civilité", "Nom d'exercice", "Prénom d'exercice",
    "Code profession", "Libellé profession", "Code catégorie professionnelle", "Libellé catégorie professionnelle",
    "Code type savoir-faire", "Libellé type savoir-faire", "Code savoir-faire", "Libellé savoir-faire",
    "Code mode exercice", "Libellé mode exercice", "Numéro SIRET site", "Numéro SIREN site", "Numéro FINESS site",
    "Numéro FINESS établissement juridique", "Identifiant technique de la structure", "Raison sociale site",
    "Enseigne commerciale site", "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)", "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)", "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)", "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)", "Bureau cedex (coord. structure)", "Code postal (coord. structure)",
    "Code commune (coord. structure)", "Libellé commune (coord. structure)", "Code pays (coord. structure)",
    "Libellé pays (coord. structure)", "Téléphone (coord. structure)", "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)", "Adresse e-mail (coord. structure)", "Code département (coord. structure)",
    "Libellé département (coord. structure)", "Ancien identifiant de la structure", "Autorité d'enregistrement",
    "Code secteur d'activité", "Libellé secteur d'activité", "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens", "Code fonction", "Libellé fonction", "Code genre d'activité",
    "Libellé genre d'activité",
]
PS_HEADER_48 = PS_HEADER_56[:48]

MAX_LINE = 1 << 16                      # bytes; a longer line is malformed (real lines are < 1 KB)
MAILBOX_TYPES = frozenset({"PER", "ORG", "APP", "CAB"})

# COPY column lists, in the order of the tuples produced below.
MAILBOX_COLUMNS = (
    "address", "mailbox_type", "pp_id_type", "pp_id", "national_id", "structure_id_type", "structure_id", "finess",
    "siret", "service", "civility", "last_name", "first_name", "category_code", "category_label", "profession_code",
    "profession_label", "specialty_code", "specialty_label", "dematerialisation", "structure_name",
    "structure_brand", "address_lines", "town", "postcode", "department", "country", "row_hash", "search",
)
ACTIVITY_COLUMNS = (
    "national_id", "pp_id_type", "pp_id", "civility", "last_name", "first_name", "profession_code",
    "profession_label", "category_code", "category_label", "specialty_code", "specialty_label", "practice_mode",
    "practice_mode_label", "siret", "finess", "finess_legal", "structure_tech_id", "structure_name",
    "structure_brand", "address_lines", "postcode", "town", "department", "sector_code", "sector_label", "row_hash",
    "pp_search", "st_search",
)

# PS column (folded header label) for each activity field; first label found wins.
_PS_FIELDS: dict[str, tuple[str, ...]] = {
    "national_id": ("identification nationale pp",),
    "pp_id_type": ("type d identifiant pp",),
    "pp_id": ("identifiant pp",),
    "civility": ("libelle civilite exercice", "libelle civilite"),
    "last_name": ("nom d exercice",),
    "first_name": ("prenom d exercice",),
    "profession_code": ("code profession",),
    "profession_label": ("libelle profession",),
    "category_code": ("code categorie professionnelle",),
    "category_label": ("libelle categorie professionnelle",),
    "specialty_code": ("code savoir faire",),
    "specialty_label": ("libelle savoir faire",),
    "practice_mode": ("code mode exercice",),
    "practice_mode_label": ("libelle mode exercice",),
    "siret": ("numero siret site",),
    "finess": ("numero finess site",),
    "finess_legal": ("numero finess etablissement juridique",),
    "structure_tech_id": ("identifiant technique de la structure",),
    "structure_name": ("raison sociale site",),
    "structure_brand": ("enseigne commerciale site",),
    "l_dest": ("complement destinataire coord structure",),
    "l_geo": ("complement point geographique coord structure",),
    "l_num": ("numero voie coord structure",),
    "l_rep": ("indice repetition voie coord structure",),
    "l_type": ("libelle type de voie coord structure", "code type de voie coord structure"),
    "l_street": ("libelle voie coord structure",),
    "l_mention": ("mention distribution coord structure",),
    "postcode": ("code postal coord structure",),
    "town": ("libelle commune coord structure",),
    "department": ("libelle departement coord structure", "code departement coord structure"),
    "sector_code": ("code secteur d activite",),
    "sector_label": ("libelle secteur d activite",),
}
_PS_REQUIRED = ("national_id", "last_name")
_TRUE = frozenset({"o", "oui", "y", "yes", "true", "t", "1", "vrai"})
_FALSE = frozenset({"n", "non", "no", "false", "f", "0", "faux"})
_POSTCODE_PREFIX = re.compile(r"^\s*\d{5}\s+")


@dataclass
class Stats:
    lines: int = 0                      # data lines read (header and blank lines excluded)
    rows: int = 0                       # rows produced
    rejected: int = 0
    duplicates: int = 0
    rejected_lines: list[int] = field(default_factory=list)
    recoded: int = 0                    # PS lines read as cp1252


def _hash(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big", signed=True)


def _join(*parts: str) -> str | None:
    text = ", ".join(p for p in (s.strip() for s in parts) if p)
    return text or None


class Reader:
    """Reads one file: `kind` ("mssante" or "ps") and `columns` (COPY column order) are known after construction;
    `batch(n)` returns up to n row tuples, [] at the end. `name` is used in error locations."""

    REPORTED = 10                       # how many rejected line numbers are kept

    def __init__(self, stream: BinaryIO, name: str):
        self.stream = stream
        self.name = name
        self.stats = Stats()
        self.sha256 = hashlib.sha256()
        self._lineno = 1
        self._pending: tuple[int, bytes] | None = None
        self._seen: set[str] = set()
        self._folded: dict[str, str] = {}
        self._structures: dict[tuple[str, str], tuple[str | None, str | None]] = {}
        self._done = False
        raw = stream.readline(MAX_LINE)
        self.sha256.update(raw)
        if not raw:
            raise ImportFileError("empty file", where=f"{name}:1")
        if len(raw) >= MAX_LINE and not raw.endswith(b"\n"):
            raise ImportFileError(f"header line longer than {MAX_LINE} bytes: not a directory file", where=f"{name}:1")
        try:
            header = raw.decode("utf-8-sig").rstrip("\r\n")
        except UnicodeDecodeError:
            try:
                header = raw.decode("cp1252").rstrip("\r\n")
            except UnicodeDecodeError as exc:         # 0x81, 0x8d, 0x8f, 0x90, 0x9d: not even cp1252
                raise ImportFileError(f"header line is neither UTF-8 nor cp1252 (byte 0x{raw[exc.start]:02x}): "
                                      "not a directory file", where=f"{name}:1:{exc.start + 1}") from None
        labels = [fold(h) for h in header.split("|")]
        self._row: Callable[[list[str], str], tuple | None]
        if len(labels) >= 2 and labels[0] in ("type de bal", "type bal") and labels[1].startswith("adresse bal"):
            if not (len(labels) == 31 or (len(labels) == 32 and labels[31] == "")):
                raise ImportFileError(f"Extraction_Correspondance_MSSante header has {len(labels)} columns, "
                                      "expected 31", where=f"{name}:1")
            self.kind, self.columns, self._row, self._width = "mssante", MAILBOX_COLUMNS, self._mailbox, 31
        elif "identification nationale pp" in labels and "nom d exercice" in labels:
            self._index = {}
            for key, candidates in _PS_FIELDS.items():
                for label in candidates:
                    if label in labels:
                        self._index[key] = labels.index(label)
                        break
            self.kind, self.columns, self._row, self._width = "ps", ACTIVITY_COLUMNS, self._activity, len(labels)
        else:
            raise ImportFileError("not an Extraction_Correspondance_MSSante or PS_LibreAcces_Personne_activite "
                                  f"file (header starts {header[:60]!r})", where=f"{name}:1")

    @property
    def lineno(self) -> int:
        """The last line read (1 = header)."""
        return self._lineno

    # -- streaming -------------------------------------------------------------------------------------------

    def batch(self, size: int = 5000) -> list[tuple]:
        out: list[tuple] = []
        if self._done:
            return out
        readline = self.stream.readline
        while len(out) < size:
            raw = readline(MAX_LINE)
            if not raw:
                self._finish(out)
                return out
            self._lineno += 1
            self.sha256.update(raw)
            if len(raw) >= MAX_LINE and not raw.endswith(b"\n"):
                raw = self._skip_long_line()
            if raw in (b"\n", b"\r\n"):
                continue
            pending, self._pending = self._pending, (self._lineno, raw)
            if pending is not None:
                row = self._line(*pending, last=False)
                if row is not None:
                    out.append(row)
        return out

    def _skip_long_line(self) -> bytes:
        """Consume the rest of an oversized line (never held whole); return a stand-in that is rejected."""
        while True:
            more = self.stream.readline(MAX_LINE)
            self.sha256.update(more)
            if not more:
                return b"\x00"
            if more.endswith(b"\n"):
                return b"\x00\n"

    def _finish(self, out: list[tuple]) -> None:
        self._done = True
        if self._pending is None:
            raise ImportFileError("no data lines after the header", where=f"{self.name}:{self._lineno}")
        lineno, raw = self._pending
        if not raw.endswith(b"\n"):
            raise ImportFileError("truncated last line (no final newline): incomplete download?",
                                  where=f"{self.name}:{lineno}")
        row = self._line(lineno, raw, last=True)
        if row is not None:
            out.append(row)

    def _line(self, lineno: int, raw: bytes, *, last: bool) -> tuple | None:
        self.stats.lines += 1
        raw = raw.rstrip(b"\r\n")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            if self.kind != "ps":
                return self._reject(lineno)
            text = raw.decode("cp1252", errors="replace")
            self.stats.recoded += 1
        fields = text.split("|")
        n = len(fields)
        if n != self._width and not (n == self._width + 1 and not fields[-1] and self.kind == "mssante"):
            if last:
                raise ImportFileError(f"truncated last line: {n} columns, expected {self._width}",
                                      where=f"{self.name}:{lineno}")
            return self._reject(lineno)
        if "\x00" in text:
            return self._reject(lineno)
        row = self._row(fields, raw)
        if row is None:
            return self._reject(lineno)
        if row == ():
            self.stats.duplicates += 1
            return None
        self.stats.rows += 1
        return row

    def _reject(self, lineno: int) -> None:
        self.stats.rejected += 1
        if len(self.stats.rejected_lines) < self.REPORTED:
            self.stats.rejected_lines.append(lineno)
        return None

    # -- one line of each kind ---------------------------------------------------------------------------------

    def _fold(self, text: str | None) -> str:
        """fold() memoised: names, towns and labels repeat across hundreds of thousands of lines."""
        if not text:
            return ""
        cache = self._folded
        out = cache.get(text)
        if out is None:
            if len(cache) > 200_000:
                cache.clear()
            out = cache[text] = fold(text)
        return out

    def _mailbox(self, f: list[str], raw: bytes) -> tuple | None:
        """None: malformed; (): duplicate address; else the row (MAILBOX_COLUMNS order)."""
        mtype = f[0].strip().upper()
        addr = norm_address(f[1])
        if mtype not in MAILBOX_TYPES or addr is None:
            return None
        if addr in self._seen:
            return ()
        self._seen.add(addr)
        v = [s or None for s in map(str.strip, f)]
        nid = v[4]
        if nid is None and v[2] and v[3]:
            nid = v[2] + v[3]
        key = (f[5], f[6])
        ids = self._structures.get(key)
        if ids is None:
            if len(self._structures) > 200_000:
                self._structures.clear()
            ids = self._structures[key] = structure_ids(f[5], f[6])
        demat = f[17].strip().lower()
        town = _POSTCODE_PREFIX.sub("", v[27]) if v[27] else None
        fd = self._fold
        search = " ".join(filter(None, (fd(v[9]), fd(v[10]), fd(v[14]), fd(v[16]), fd(v[7]), fd(v[18]),
                                        fd(v[19]), fd(town), v[28] if v[28] and v[28].isalnum() else fd(v[28]),
                                        fd(v[29]))))
        street = " ".join(filter(None, v[22:26]))
        lines = ", ".join(filter(None, (v[20], v[21], street, v[26]))) or None
        return (addr, mtype, v[2], v[3], nid, v[5], v[6], ids[0], ids[1], v[7], v[8], v[9], v[10], v[11], v[12],
                v[13], v[14], v[15], v[16], True if demat in _TRUE else False if demat in _FALSE else None,
                v[18], v[19], lines, town or None, v[28], v[29], v[30], _hash(raw), search)

    def _activity(self, f: list[str], raw: bytes) -> tuple | None:
        idx = self._index

        def g(key: str) -> str | None:
            i = idx.get(key)
            return (f[i].strip() or None) if i is not None else None

        nid = g("national_id")
        if not nid or any(idx.get(k) is None for k in _PS_REQUIRED):
            return None
        last, first, prof, spec = g("last_name"), g("first_name"), g("profession_label"), g("specialty_label")
        name, brand, postcode, town = g("structure_name"), g("structure_brand"), g("postcode"), g("town")
        street = " ".join(s for s in (g("l_num"), g("l_rep"), g("l_type"), g("l_street")) if s)
        fd = self._fold
        pp_search = " ".join(filter(None, (fd(last), fd(first), fd(prof), fd(spec))))
        st_search = " ".join(filter(None, (fd(name), fd(brand), fd(town), fd(postcode))))
        return (nid, g("pp_id_type"), g("pp_id"), g("civility"), last, first, g("profession_code"), prof,
                g("category_code"), g("category_label"), g("specialty_code"), spec, g("practice_mode"),
                g("practice_mode_label"), g("siret"), g("finess"), g("finess_legal"), g("structure_tech_id"), name,
                brand, _join(g("l_dest") or "", g("l_geo") or "", street, g("l_mention") or ""), postcode, town,
                g("department"), g("sector_code"), g("sector_label"), _hash(raw), pp_search, st_search)
