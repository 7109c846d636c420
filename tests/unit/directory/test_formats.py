"""Reading directory files: layouts, refusals, rejected lines; folding and identifiers; mailbox choice."""

import io

import pytest

from hub.directory import normalize, synth
from hub.directory.formats import MAILBOX_COLUMNS, MSSANTE_HEADER, PS_HEADER_48, PS_HEADER_56, Reader
from hub.directory.resolve import choose
from hub.errors import ImportFileError

HEADER = "|".join(MSSANTE_HEADER)


def read_all(text: str, name: str = "f.txt") -> tuple[Reader, list[tuple]]:
    reader = Reader(io.BufferedReader(io.BytesIO(text.encode("utf-8"))), name)
    rows: list[tuple] = []
    while batch := reader.batch(7):
        rows.extend(batch)
    return reader, rows


def mss(*lines: str) -> str:
    return "\n".join([HEADER, *lines]) + "\n"


def per(address: str, rpps: str = "10102727017", **kw) -> str:
    return synth.mssante_line(type="PER", address=address, pp_id_type="8", pp_id=rpps, national_id="8" + rpps,
                              **kw)


def test_mssante_columns_are_read_by_position():
    line = per("Jean.Dupont@Medecin.MSSante.fr", last_name="DUPONT", first_name="Jérôme",
               structure_id_type="1", structure_id="1750712184", l6="69003 LYON", postcode="69003",
               department="69", dematerialisation="Oui", structure_name="Hôpital Édouard-Herriot")
    reader, rows = read_all(mss(line))
    assert reader.kind == "mssante"
    row = dict(zip(MAILBOX_COLUMNS, rows[0]))
    assert row["address"] == "jean.dupont@medecin.mssante.fr"
    assert row["national_id"] == "810102727017"
    assert row["finess"] == "750712184" and row["siret"] is None
    assert row["town"] == "LYON" and row["dematerialisation"] is True
    assert row["search"].split() == ["dupont", "jerome", "hopital", "edouard", "herriot", "lyon", "69003", "69"]


def test_labels_are_advisory_but_the_count_is_not():
    snake = HEADER.replace("Type de BAL", "type_bal").replace("Adresse BAL", "adresse_bal")
    reader, rows = read_all(snake + "\n" + per("a@b.fr") + "\n")
    assert reader.kind == "mssante" and len(rows) == 1
    with pytest.raises(ImportFileError, match=r"f\.txt:1: .*30 columns, expected 31"):
        read_all("|".join(MSSANTE_HEADER[:30]) + "\n" + per("a@b.fr") + "\n")


def test_unknown_header_is_refused_with_location():
    with pytest.raises(ImportFileError, match=r"^x\.csv:1: not an Extraction_Correspondance_MSSante"):
        read_all("nom;prenom;adresse\nDupont;Jean;a@b.fr\n", "x.csv")


def test_truncated_last_line_without_newline_is_refused():
    text = mss(per("a@b.fr"), per("c@d.fr", rpps="10000000001"))
    with pytest.raises(ImportFileError, match=r"f\.txt:3: truncated last line \(no final newline\)"):
        read_all(text[:-1])


def test_last_line_with_too_few_columns_is_refused():
    text = mss(per("a@b.fr"), "PER|c@d.fr|8|1000")
    with pytest.raises(ImportFileError, match=r"f\.txt:3: truncated last line: 4 columns, expected 31"):
        read_all(text)


def test_empty_file_and_header_only_are_refused():
    with pytest.raises(ImportFileError, match="f.txt:1: empty file"):
        read_all("")
    with pytest.raises(ImportFileError, match="no data lines"):
        read_all(HEADER + "\n")


def test_malformed_middle_lines_are_counted_not_fatal():
    lines = [per(f"p{i}@b.fr", rpps=f"1000000000{i}") for i in range(6)]
    lines[1] = "PER|broken"                                     # wrong column count
    lines[2] = lines[2].replace("p2@b.fr", "not an address")     # no usable key
    lines[3] = lines[3].replace("PER", "XYZ", 1)                 # unknown mailbox type
    lines.insert(4, lines[0].replace("p0@b.fr", "P0@B.FR"))      # duplicate address, other case
    reader, rows = read_all(mss(*lines))
    assert [r[0] for r in rows] == ["p0@b.fr", "p4@b.fr", "p5@b.fr"]
    assert reader.stats.rejected == 3 and reader.stats.rejected_lines == [3, 4, 5]
    assert reader.stats.duplicates == 1 and reader.stats.lines == 7


def test_undecodable_line_is_rejected():
    bad = per("c@d.fr").encode("utf-8").replace(b"|8|", b"|\xff|", 1)
    body = mss(per("a@b.fr")).encode() + bad + b"\n" + (per("e@f.fr") + "\n").encode()
    reader = Reader(io.BufferedReader(io.BytesIO(body)), "f")
    rows = reader.batch(100)
    assert [r[0] for r in rows] == ["a@b.fr", "e@f.fr"]
    assert reader.stats.rejected == 1 and reader.stats.rejected_lines == [3]


@pytest.mark.parametrize("columns", [56, 48])
def test_ps_libreacces_read_by_header_name(columns):
    header = "|".join(PS_HEADER_56 if columns == 56 else PS_HEADER_48) + "|"
    text = header + "\n" + "\n".join(synth.ps_lines(5, columns=columns)) + "\n"
    reader, rows = read_all(text)
    assert reader.kind == "ps" and reader.stats.rejected == 0 and len(rows) == 5
    row = dict(zip(reader.columns, rows[0]))
    assert row["national_id"] == "8" + synth.rpps(0) and row["last_name"] == "MARTIN"
    assert row["practice_mode"] in ("L", "S") and row["pp_search"].startswith("martin emilie")


def test_ps_drifted_columns_still_found_by_name():
    names = ["Identification nationale PP", "Colonne nouvelle", "Nom d'exercice", "Prénom d'exercice"]
    text = "|".join(names) + "|\n810000000007|x|DUPONT|Zoë|\n"
    reader, rows = read_all(text)
    row = dict(zip(reader.columns, rows[0]))
    assert (row["national_id"], row["last_name"], row["first_name"]) == ("810000000007", "DUPONT", "Zoë")


def test_fold_and_identifiers():
    assert normalize.fold("Hôpital Saint-Éloi, ŒUVRE d’Ödön") == "hopital saint eloi oeuvre d odon"
    assert normalize.address(" <Jean.Dupont@Medecin.MSSante.FR> ") == "jean.dupont@medecin.mssante.fr"
    assert normalize.address("no-at-sign") is None and normalize.address("a@b@c") is None
    assert normalize.national_id("10102727017") == "810102727017"
    assert normalize.national_id("810102727017") == "810102727017"
    assert normalize.national_id("0012807590") == "0012807590"
    assert normalize.national_id("12345") is None
    assert normalize.structure_ids("1", "1580008803") == ("580008803", None)
    assert normalize.structure_ids("3", "312345678901234") == (None, "12345678901234")
    assert normalize.sender_structure("1580008803")[0] == "580008803"
    assert normalize.classify("2A1234567") == "finess" and normalize.classify("dupont lyon") == "text"


def _row(address, mailbox_type, finess=None, preferred=None):
    return {"address": address, "mailbox_type": mailbox_type, "finess": finess, "siret": None,
            "structure_id": "1" + finess if finess else None, "preferred_mailbox": preferred}


def test_choose_preference_then_per_then_sender_structure():
    rows = [_row("org@x.fr", "ORG", "111111111"), _row("b@y.fr", "PER", "222222222"),
            _row("a@x.fr", "PER", "111111111")]
    assert choose(rows, None)[0]["address"] == "a@x.fr"                    # PER, then alphabetical
    best, why = choose(rows, "1222222222")
    assert best["address"] == "b@y.fr" and "sender's structure" in why
    pref = [dict(r, preferred_mailbox="org@x.fr") for r in rows]
    best, why = choose(pref, "1222222222")
    assert best["address"] == "org@x.fr" and "preferred" in why
    gone = [dict(r, preferred_mailbox="gone@x.fr") for r in rows]
    assert "no longer published" in choose(gone, None)[1]


def test_synth_is_deterministic_and_has_duplicates_and_accents():
    a = list(synth.mssante_lines(7000, seed=3))
    assert a == list(synth.mssante_lines(7000, seed=3))
    assert len(a) == 7000 and all(len(x.split("|")) == 31 for x in a)
    addresses = [x.split("|")[1] for x in a]
    assert len(set(addresses)) < len(addresses)
    assert {x.split("|")[0] for x in a} == {"PER", "ORG"}
    assert any("É" in x or "ë" in x for x in a)
    bad = list(synth.mssante_lines(500, seed=3, malformed=4))
    assert sum(1 for x, y in zip(bad, synth.mssante_lines(500, seed=3)) if x != y) == 4


def test_an_oversized_line_is_rejected_without_being_held():
    long_line = "PER|" + "x" * 200_000
    reader, rows = read_all(mss(per("a@b.fr"), long_line, per("c@d.fr")))
    assert [r[0] for r in rows] == ["a@b.fr", "c@d.fr"] and reader.stats.rejected_lines == [3]
    with pytest.raises(ImportFileError, match=r"f\.txt:3: truncated last line"):
        read_all(mss(per("a@b.fr"))[:] + long_line)
    with pytest.raises(ImportFileError, match="header line longer"):
        read_all("Type de BAL|" * 10_000)
