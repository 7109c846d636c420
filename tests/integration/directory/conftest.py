"""Directory fixtures: crafted extraction files and a resolver with a fixed trust space."""

import pytest

from hub.directory import synth
from hub.directory.resolve import Resolver

RESOLUTION_DOMAIN = "rpps.hub.example.org"
TRUSTED = {"trusted.mssante.fr", "medecin.mssante.fr", "ch-a.mssante.fr", "ch-b.mssante.fr"}
R1, R2 = "10102727017", "10000005479"           # RPPS of two practitioners
F1, F2 = "750712184", "2A0000123"               # FINESS of two structures


def per(address: str, rpps: str, **kw) -> str:
    return synth.mssante_line(type="PER", address=address, pp_id_type="8", pp_id=rpps, national_id="8" + rpps,
                              **kw)


def org(address: str, finess: str, **kw) -> str:
    return synth.mssante_line(type="ORG", address=address, structure_id_type="1", structure_id="1" + finess, **kw)


CRAFTED = [
    per("Jean.Dupont@Medecin.MSSante.fr", R1, last_name="DUPONT", first_name="Jérôme", profession_label="Médecin",
        structure_id_type="3", structure_id="312345678901234", l6="69003 LYON", postcode="69003", department="69",
        structure_name="Cabinet des Érables"),
    per("h.noel@ch-a.mssante.fr", R2, last_name="NOËL", first_name="Hélène", structure_id_type="1",
        structure_id="1" + F1, structure_name="Centre hospitalier A", l6="75013 PARIS", postcode="75013"),
    per("h.noel@ch-b.mssante.fr", R2, last_name="NOËL", first_name="Hélène", structure_id_type="1",
        structure_id="1" + F2, structure_name="Hôpital B", l6="20000 AJACCIO", postcode="20000"),
    synth.mssante_line(type="ORG", address="secretariat.noel@cabinet.mssante.fr", pp_id_type="8", pp_id=R2,
                       national_id="8" + R2, structure_name="Cabinet Noël"),
    org("urgences@ch-a.mssante.fr", F1, service="Accueil urgences", structure_name="Centre hospitalier A",
        l6="75013 PARIS", postcode="75013"),
]


def write_mss(path, lines, **kw):
    return synth.write(path, kind="mssante", lines=list(lines), **kw)


@pytest.fixture
def resolver():
    return Resolver(resolution_domain=RESOLUTION_DOMAIN, hub_domains=["hub.example.org", RESOLUTION_DOMAIN],
                    is_trusted_domain=lambda d: d in TRUSTED)
