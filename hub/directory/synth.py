"""Synthetic national directory files in the real layouts, for tests and benchmarks (no real person in them).

    python -m hub.directory.synth --rows 535000 --kind mssante --out /tmp/Extraction_Correspondance_MSSante.txt
    python -m hub.directory.synth --rows 20000 --kind ps --columns 48 --out /tmp/ps.zip --zip

`mssante`: the 31 columns of Extraction_Correspondance_MSSante in order, header labels as published, ~85 % PER and
~15 % ORG, accented names (É, ç, ë, œ...), one address in ~3,000 repeated (the real file has 169 in 535k),
practitioners with two PER mailboxes at different structures, red-list gaps (practitioner numbers with no
mailbox). `ps`: PS_LibreAcces_Personne_activite, 56 or 48 columns with the trailing `|`, practitioners numbered
like the mssante file (same seed -> same people), one or two activities each. Deterministic for a seed;
`malformed=N` spreads N broken lines; `truncate_last=True` cuts the last line (no final newline).
Practitioner p has RPPS `rpps(p)`; mailbox row i belongs to practitioner `owner(i)` (see the functions).
"""

from __future__ import annotations

import argparse
import random
import sys
import zipfile
from pathlib import Path
from typing import Iterator

from hub.directory.formats import MSSANTE_HEADER, PS_HEADER_48, PS_HEADER_56
from hub.directory.normalize import fold

MSSANTE_KEYS = (
    "type", "address", "pp_id_type", "pp_id", "national_id", "structure_id_type", "structure_id", "service",
    "civility", "last_name", "first_name", "category_code", "category_label", "profession_code", "profession_label",
    "specialty_code", "specialty_label", "dematerialisation", "structure_name", "structure_brand", "l2", "l3",
    "l4_number", "l4_complement", "l4_type", "l4_street", "l5", "l6", "postcode", "department", "country",
)

LAST = ["Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard", "Petit", "Durand", "Leroy", "Moreau",
        "Simon", "Laurent", "Lefèvre", "Michel", "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier",
        "Morel", "Girard", "André", "Lefebvre", "Mercier", "Dupont", "Lambert", "Bonnet", "François", "Martinez",
        "Légaré", "Gauthier", "Chevalier", "Perrin", "Faure", "Rousseau", "Blanc", "Guérin", "Muller", "Hénault",
        "Boucher", "Noël", "Brûlé", "Béranger", "Cœur", "Lemaître", "Ménard", "Éluard", "Caraël", "Desbiens",
        "Çelik", "Pétain-Roy", "D'Aubigné", "Le Bihan", "Kerléo", "Santoni", "N'Diaye", "Nguyễn", "Großmann",
        "Ødegaard"]
FIRST = ["Émilie", "François", "Noël", "Zoë", "Anaïs", "Jérôme", "Cécile", "Gaëlle", "Loïc", "Benoît", "Maëlys",
         "Chloé", "Clément", "Agnès", "Françoise", "Thérèse", "Hélène", "Stéphane", "Raphaël", "Inès", "Léa",
         "Jean", "Marie", "Pierre", "Sophie", "Nicolas", "Isabelle", "Julien", "Camille", "Mathieu", "Aurélie",
         "Joël", "Eléonore", "Marc-Antoine", "Anne-Sophie", "Hugo", "Manon", "Bérénice", "Timothée", "Ophélie"]
TOWNS = [("PARIS", "75013", "75"), ("LYON", "69003", "69"), ("SAINT-ÉTIENNE", "42000", "42"),
         ("BESANÇON", "25000", "25"), ("ORLÉANS", "45000", "45"), ("NÎMES", "30000", "30"),
         ("BÉZIERS", "34500", "34"), ("CLERMONT-FERRAND", "63000", "63"), ("ÉVREUX", "27000", "27"),
         ("CHÂLONS-EN-CHAMPAGNE", "51000", "51"), ("AJACCIO", "20000", "2A"), ("POINTE-À-PITRE", "97110", "971"),
         ("MARSEILLE", "13005", "13"), ("LILLE", "59000", "59"), ("RENNES", "35000", "35"), ("DAX", "40100", "40")]
PROFESSIONS = [("10", "Médecin", "SM54", "Médecine générale", 40), ("10", "Médecin", "SM04", "Cardiologie", 6),
               ("10", "Médecin", "SM03", "Biologie médicale", 3), ("21", "Pharmacien", "", "", 12),
               ("60", "Infirmier", "", "", 20), ("40", "Chirurgien-Dentiste", "", "", 7),
               ("50", "Sage-Femme", "", "", 4), ("70", "Masseur-Kinésithérapeute", "", "", 8)]
STRUCT_KINDS = ["Centre hospitalier de {t}", "CHU de {t}", "Clinique Saint-Éloi", "Clinique des Cèdres",
                "Laboratoire Biolœil {t}", "Centre de santé Émile-Zola", "EHPAD Les Glycines", "Pharmacie du Marché"]
SERVICES = ["Secrétariat cardiologie", "Accueil urgences", "Service de pédiatrie", "Laboratoire", "Bureau des entrées",
            "Imagerie médicale", "Pharmacie à usage intérieur", "Médecine gériatrique"]
PER_DOMAINS = ["medecin.mssante.fr", "pharmacien.mssante.fr", "infirmier.mssante.fr", "ch-{t}.mssante.fr",
               "mssante.chu-{t}.fr", "sante-{t}.mssante.fr"]
N_STRUCTURES = 2000


def rpps(p: int) -> str:
    """RPPS (11 digits) of synthetic practitioner p."""
    return str(10000000000 + p * 13 + 7)


def owner(i: int, red_list_every: int = 37) -> int:
    """Practitioner owning PER mailbox row i: every `red_list_every`-th practitioner has no mailbox (red list)."""
    return i + i // (red_list_every - 1)


def _person(p: int) -> tuple[int, int, tuple]:
    """(index in LAST, index in FIRST, profession) of practitioner p."""
    li, fi = (p * 7) % len(LAST), (p * 11 + p // len(LAST)) % len(FIRST)
    weights = p % 100
    acc = 0
    for prof in PROFESSIONS:
        acc += prof[4]
        if weights < acc:
            return li, fi, prof
    return li, fi, PROFESSIONS[0]


def _structure(s: int) -> tuple[str, str, str, str, str, str]:
    """(finess, siret, name, town, postcode, department) of structure s."""
    town, postcode, dept = TOWNS[s % len(TOWNS)]
    finess = dept[:2] + f"{(s * 7919) % 10_000_000:07d}"
    siret = f"{(s * 104729) % 10**14:014d}"
    name = STRUCT_KINDS[s % len(STRUCT_KINDS)].format(t=town.title())
    return finess, siret, name, town, postcode, dept


def _slug(text: str) -> str:
    return fold(text).replace(" ", "-")


_ASCII_LAST = [_slug(x) for x in LAST]
_ASCII_FIRST = [_slug(x) for x in FIRST]


def mssante_line(**fields: str) -> str:
    """One line (no newline) from named fields (MSSANTE_KEYS); missing fields are empty."""
    unknown = set(fields) - set(MSSANTE_KEYS)
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    return "|".join(fields.get(k, "") for k in MSSANTE_KEYS)


def mssante_lines(rows: int, *, seed: int = 0, malformed: int = 0, two_mailboxes_every: int = 20,
                  duplicate_every: int = 3000) -> Iterator[str]:
    """`rows` data lines (no newline): every duplicate_every-th repeats an earlier address; `malformed` of them
    (never the first or the last) are broken."""
    rnd = random.Random(seed)
    bad_at = set(rnd.sample(range(1, max(rows - 1, 1)), min(malformed, max(rows - 2, 0)))) if malformed else set()
    emitted: list[str] = []
    lines = _mssante(random.Random(seed + 1), two_mailboxes_every)
    for n in range(rows):
        if duplicate_every and n and n % duplicate_every == 0:
            line = emitted[rnd.randrange(len(emitted))]
        else:
            line = next(lines)
            if len(emitted) < 5000:
                emitted.append(line)
        if n in bad_at:
            line = "|".join(line.split("|")[:-3]) if n % 2 else line.replace("@", " at ", 1)
        yield line


def _mssante(rnd: random.Random, two_mailboxes_every: int) -> Iterator[str]:
    nper = 0
    i = 0
    while True:
        i += 1
        s = rnd.randrange(N_STRUCTURES)
        finess, siret, sname, town, postcode, dept = _structure(s)
        if rnd.random() < 0.85:
            p = owner(nper)
            nper += 1
            li, fi, (pcode, plabel, scode, slabel, _) = _person(p)
            last, first, local = LAST[li], FIRST[fi], f"{_ASCII_FIRST[fi]}.{_ASCII_LAST[li]}"
            r = rpps(p)
            second = two_mailboxes_every and p % two_mailboxes_every == 0 and rnd.random() < 0.9
            dom = PER_DOMAINS[p % len(PER_DOMAINS)].format(t=_slug(town))
            k = p // (len(LAST) * len(FIRST))
            addr = f"{local}{k or ''}@{dom}"
            liberal = dom.startswith(("medecin", "pharmacien", "infirmier"))
            st_type, st_id = ("3", "3" + siret) if liberal else ("1", "1" + finess)
            line = mssante_line(
                type="PER", address=addr, pp_id_type="8", pp_id=r, national_id="8" + r, structure_id_type=st_type,
                structure_id=st_id, civility="Docteur" if pcode == "10" else "", last_name=last.upper(),
                first_name=first, category_code="C", category_label="Civil", profession_code=pcode,
                profession_label=plabel, specialty_code=scode, specialty_label=slabel,
                dematerialisation="Oui" if rnd.random() < 0.7 else "Non", structure_name=sname,
                l4_number=str(1 + s % 120), l4_type="R", l4_street="de la République", l6=f"{postcode} {town}",
                postcode=postcode, department=dept, country="FRANCE")
            if second:   # the same practitioner, PER at another structure (hospital)
                f2, _, n2, t2, pc2, d2 = _structure((s + 1) % N_STRUCTURES)
                yield line
                line = mssante_line(
                    type="PER", address=f"{local}{k or ''}@ch-{_slug(t2)}.mssante.fr", pp_id_type="8", pp_id=r,
                    national_id="8" + r, structure_id_type="1", structure_id="1" + f2, last_name=last.upper(),
                    first_name=first,
                    profession_code=pcode, profession_label=plabel, structure_name=n2, l6=f"{pc2} {t2}",
                    postcode=pc2, department=d2, country="FRANCE", dematerialisation="Oui")
        else:
            service = SERVICES[i % len(SERVICES)]
            addr = f"{_slug(service)}.{i}@{_slug(sname)[:20]}.mssante.fr"
            line = mssante_line(
                type="ORG", address=addr, structure_id_type="1", structure_id="1" + finess, service=service,
                dematerialisation="Oui", structure_name=sname, l2="Bâtiment Ä", l4_number=str(1 + s % 90),
                l4_type="AV", l4_street="Jean-Jaurès", l6=f"{postcode} {town}", postcode=postcode, department=dept,
                country="FRANCE")
        yield line


def ps_lines(rows: int, *, seed: int = 0, columns: int = 56, malformed: int = 0) -> Iterator[str]:
    """Activity lines (no newline, trailing `|`); practitioner p has one or two activities."""
    rnd = random.Random(seed)
    bad_at = set(rnd.sample(range(1, max(rows - 1, 1)), min(malformed, max(rows - 2, 0)))) if malformed else set()
    p = 0
    second = False
    for i in range(rows):
        li, fi, (pcode, plabel, scode, slabel, _) = _person(p)
        last, first = LAST[li], FIRST[fi]
        s = (p * 31 + (1 if second else 0)) % N_STRUCTURES
        finess, siret, sname, town, postcode, dept = _structure(s)
        mode = "S" if second or p % 3 == 0 else "L"
        v = ["8", rpps(p), "8" + rpps(p), "DR" if pcode == "10" else "", "Docteur" if pcode == "10" else "", "",
             "", last.upper(), first, pcode, plabel, "C", "Civil", "S" if scode else "",
             "Spécialité" if scode else "",
             scode, slabel, mode, "Libéral" if mode == "L" else "Salarié", siret if mode == "L" else "",
             siret[:9] if mode == "L" else "", finess if mode == "S" else "", "", f"S{s:08d}", sname, "", "", "",
             str(1 + s % 120), "", "R", "Rue", "de la République", "", "", postcode, postcode, town, "99000",
             "France", "", "", "", "", dept, dept, "", "RPPS/ARS" if pcode == "10" else "ARS",
             "SA01" if mode == "S" else "", "Etablissement de santé" if mode == "S" else "", "", "", "", "", "", ""]
        line = "|".join(v[:columns]) + "|"
        if i in bad_at:
            line = "|".join(line.split("|")[:-4]) + "|"
        yield line
        if second or p % 4 != 0:
            p += 1
            second = False
        else:
            second = True


def write(path: str | Path, *, kind: str = "mssante", rows: int = 1000, seed: int = 0, zip: bool = False,
          columns: int = 56, malformed: int = 0, truncate_last: bool = False, lines: list[str] | None = None,
          member: str | None = None) -> Path:
    """Write a file (or a zip holding it); `lines` replaces the generated data lines."""
    path = Path(path)
    if kind == "mssante":
        header = "|".join(MSSANTE_HEADER)
        data = lines if lines is not None else mssante_lines(rows, seed=seed, malformed=malformed)
        member = member or "Extraction_Correspondance_MSSante_202608260213.txt"
    elif kind == "ps":
        header = "|".join(PS_HEADER_56 if columns == 56 else PS_HEADER_48) + "|"
        data = lines if lines is not None else ps_lines(rows, seed=seed, columns=columns, malformed=malformed)
        member = member or "PS_LibreAcces_Personne_activite_202608260213.txt"
    else:
        raise ValueError(f"unknown kind {kind!r}")

    def emit(fh) -> None:
        buf = [header]
        pending = None
        for line in data:
            if pending is not None:
                buf.append(pending)
                if len(buf) >= 10000:
                    fh.write(("\n".join(buf) + "\n").encode("utf-8"))
                    buf = []
            pending = line
        if pending is not None:
            buf.append(pending)
        text = "\n".join(buf) + "\n"
        if truncate_last:   # an interrupted download: half of the last line, no final newline
            body = text[:-1]
            start = body.rfind("\n") + 1
            text = body[:start] + body[start:][: (len(body) - start) // 2]
        fh.write(text.encode("utf-8"))

    if zip:
        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
            with zf.open(member, "w", force_zip64=True) as fh:
                emit(fh)
    else:
        with open(path, "wb", buffering=1 << 20) as fh:
            emit(fh)
    return path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hub.directory.synth", description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--kind", choices=("mssante", "ps"), default="mssante")
    ap.add_argument("--columns", type=int, choices=(48, 56), default=56, help="PS_LibreAcces layout")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--malformed", type=int, default=0, help="number of broken lines to spread in the file")
    ap.add_argument("--truncate-last", action="store_true", help="cut the last line (as a broken download)")
    ap.add_argument("--zip", action="store_true")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    path = write(a.out, kind=a.kind, rows=a.rows, seed=a.seed, zip=a.zip, columns=a.columns, malformed=a.malformed,
                 truncate_last=a.truncate_last)
    print(f"wrote {path} ({a.rows} {a.kind} rows)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
