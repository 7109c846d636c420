"""The authorised-domains list parser against the real national file and damaged copies of it: the published file's
missing closing root tag is the only damage tolerated; truncation anywhere else, broken XML, a DOCTYPE, another
root or namespace refuse the file with `file:line:column` and the reason."""

import re

import pytest

from hub.directory import trust
from hub.errors import ImportFileError
from tests.support import SHARED

REAL = (SHARED / "data" / "listeblanchemssante.xml").read_bytes()
ROOT_CLOSE = b"</ListeBlancheMSSante>"


def refused(data: bytes, *words: str) -> str:
    with pytest.raises(ImportFileError) as err:
        trust.parse(data, "liste.xml")
    text = str(err.value)
    assert text.startswith("liste.xml"), text
    for w in words:
        assert w in text, text
    return text


def test_the_real_file_parses_whole_and_its_one_bad_entry_is_reported():
    parsed = trust.parse(REAL, "liste.xml")
    assert len(parsed.entries) == 6553 and len({e.domain for e in parsed.entries}) == 5001
    assert len(parsed.skipped) == 1 and "sessad@ase.ditepbeziers.mssante.fr" in parsed.skipped[0]
    assert parsed.skipped[0].startswith("line ")
    # the same file with its closing tag (as ANS may fix it one day) gives the same list
    fixed = trust.parse(REAL.rstrip() + b"\n" + ROOT_CLOSE + b"\n", "liste.xml")
    assert fixed.entries == parsed.entries


def _after_domaine(fraction: float) -> int:
    return REAL.index(b"</Domaine>", int(len(REAL) * fraction)) + len(b"</Domaine>")


@pytest.mark.parametrize("fraction", [0.01, 0.25, 0.5, 0.8, 0.99])
def test_cut_after_a_closing_domaine_is_refused_as_truncated(fraction):
    for tail in (b"", b"\n", b"\n        "):
        refused(REAL[:_after_domaine(fraction)] + tail, "truncated")


@pytest.mark.parametrize("cut", [
    lambda: REAL.index(b"<Nom>", len(REAL) // 3) + 9,                               # inside a text node
    lambda: REAL.index(b"<DNCertificatOperateur>", len(REAL) // 2) + 5,             # inside a start tag name
    lambda: REAL.index(b"</DateMAJ>", len(REAL) // 2) + 4,                          # inside an end tag
    lambda: REAL.index(b"</Domaine>", len(REAL) // 2) + 9,                          # just before a `>`
    lambda: REAL.index(b"listeblanche.mssante.fr/schema"),                          # inside the xmlns attribute
    lambda: REAL.index(b"<ListeDomaines>") + len(b"<ListeDomaines>"),               # before the first entry
    lambda: REAL.rindex(b"</ListeDomaines>") + 8,                                   # inside the last end tag
    lambda: REAL.rindex(b"</ListeDomaines>"),                                       # all entries, no list end
])
def test_cut_inside_an_element_or_attribute_is_refused(cut):
    refused(REAL[:cut()], "truncated")


def test_cut_at_many_points_never_imports():
    step = len(REAL) // 37
    for cut in range(100, len(REAL) - 40, step):
        refused(REAL[:cut])


@pytest.mark.parametrize("damage, words", [
    (lambda d: d.replace(b"<Domaine>", b"<Domainf>", 1), ("damaged", "mismatch")),
    (lambda d: d.replace(b"</Nom>", b"", 1), ("damaged",)),
    (lambda d: d[:len(d) // 2] + b"\x00" + d[len(d) // 2:], ("damaged",)),
    (lambda d: d[:len(d) // 2] + b"\xff\xfe" + d[len(d) // 2:], ("damaged",)),
    (lambda d: d + ROOT_CLOSE + b"<ListeBlancheMSSante>", ("damaged",)),              # two root elements
    (lambda d: d + ROOT_CLOSE + b"garbage", ("damaged",)),
    (lambda d: d.replace(b"<ListeDomaines>", b"<ListeDomaines><ListeDomaines>", 1), ()),
])
def test_damaged_files_are_refused(damage, words):
    refused(damage(REAL), *words)


def test_doctype_is_refused_with_or_without_entities():
    decl, rest = REAL.split(b"?>", 1)
    internal = decl + b'?><!DOCTYPE ListeBlancheMSSante [<!ENTITY e "evil.example">]>' + rest.replace(
        b"<Nom>adsea29.mssante.fr</Nom>", b"<Nom>&e;</Nom>", 1)
    refused(internal, "DOCTYPE")
    external = decl + b'?><!DOCTYPE ListeBlancheMSSante SYSTEM "file:///etc/passwd">' + rest
    refused(external, "DOCTYPE")
    laughs = decl + (b'?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
                     b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>') + rest.replace(
        b"<Description>BREST LA SAUVEGARDE</Description>", b"<Description>&c;</Description>", 1)
    refused(laughs, "DOCTYPE")


def test_other_roots_namespaces_and_structures_are_refused():
    refused(b"<?xml version='1.0'?><html><body>503 Service Unavailable</body></html>", "not an MSSant")
    refused(REAL.replace(b'xmlns="https://listeblanche.mssante.fr/schema"', b'xmlns="urn:other"', 1),
            "not an MSSant", "urn:other")
    refused(REAL.replace(b"<DateDeGeneration>2025-03-13T14:54:10Z</DateDeGeneration>", b"", 1), "DateDeGeneration")
    head = REAL[:REAL.index(b"<ListeDomaines>")]
    refused(head + ROOT_CLOSE, "ListeDomaines")
    refused(head + b"<ListeDomaines></ListeDomaines>" + ROOT_CLOSE, "no Domaine")
    refused(b"", "empty")
    refused(b"   \n", "empty")


def test_more_than_a_few_unusable_entries_refuse_the_file():
    names = re.findall(rb"<Nom>([^<]+)</Nom>", REAL)[:trust.MAX_SKIPPED + 1]
    data = REAL
    for n in names:
        data = data.replace(b"<Nom>" + n + b"</Nom>", b"<Nom>" + n + b" x</Nom>", 1)
    refused(data, f"{trust.MAX_SKIPPED + 2} unusable Domaine entries")
    few = REAL.replace(b"<DateMAJ>2025-03-13T14:54:10Z</DateMAJ>", b"<DateMAJ>hier</DateMAJ>", 1)
    assert any("DateMAJ" in s for s in trust.parse(few, "liste.xml").skipped)
