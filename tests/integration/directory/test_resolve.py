"""Recipient resolution against a real PostgreSQL, one test per path."""

import pytest

from hub.directory import store
from hub.directory.importer import import_file

from .conftest import CRAFTED, F2, R1, R2, RESOLUTION_DOMAIN, write_mss


@pytest.fixture
async def loaded(conn, tmp_path):
    await import_file(conn, write_mss(tmp_path / "Extraction_Correspondance_MSSante.txt", CRAFTED))
    return conn


async def test_published_address_resolves_as_is(loaded, resolver):
    r = await resolver.resolve(loaded, "<Jean.Dupont@MEDECIN.mssante.fr>")
    assert (r.address, r.method, r.kind, r.mailbox_type, r.national_id) == (
        "jean.dupont@medecin.mssante.fr", "directory", "practitioner", "PER", "8" + R1)
    assert r.rcpt == "<Jean.Dupont@MEDECIN.mssante.fr>" and not r.flagged and not r.paper
    org = await resolver.resolve(loaded, "urgences@ch-a.mssante.fr")
    assert (org.method, org.kind, org.mailbox_type, org.national_id) == ("directory", "structure", "ORG", None)


@pytest.mark.parametrize("local", ["8" + R1, R1])
async def test_national_id_at_the_resolution_domain(loaded, resolver, local):
    r = await resolver.resolve(loaded, f"{local}@{RESOLUTION_DOMAIN.upper()}")
    assert (r.address, r.method, r.kind, r.national_id) == (
        "jean.dupont@medecin.mssante.fr", "national_id", "practitioner", "8" + R1)
    assert r.reason == "the practitioner's only published mailbox"


async def test_several_mailboxes_per_first_then_sender_structure(loaded, resolver):
    rcpt = f"8{R2}@{RESOLUTION_DOMAIN}"
    r = await resolver.resolve(loaded, rcpt)
    assert (r.address, r.mailbox_type) == ("h.noel@ch-a.mssante.fr", "PER")         # PER before ORG, then a-z
    for named in ("1" + F2, F2, F2.lower()):
        r = await resolver.resolve(loaded, rcpt, sender_structure=named)
        assert r.address == "h.noel@ch-b.mssante.fr", named
        assert "sender's structure" in r.reason
    r = await resolver.resolve(loaded, rcpt, sender_structure="1999999999")
    assert r.address == "h.noel@ch-a.mssante.fr"


async def test_operator_preference_wins_and_paper_is_reported(loaded, resolver):
    rcpt = f"{R2}@{RESOLUTION_DOMAIN}"
    await store.set_preference(loaded, "8" + R2, preferred_mailbox="secretariat.noel@cabinet.mssante.fr",
                               preferred_format="pdf")
    r = await resolver.resolve(loaded, rcpt, sender_structure=F2)
    assert (r.address, r.mailbox_type, r.preferred_format) == ("secretariat.noel@cabinet.mssante.fr", "ORG", "pdf")
    assert "preferred" in r.reason and not r.paper
    await store.set_preference(loaded, "8" + R2, paper=True)
    assert (await resolver.resolve(loaded, rcpt)).paper
    assert (await resolver.resolve(loaded, "h.noel@ch-b.mssante.fr")).paper          # person-level preference
    await store.set_preference(loaded, "h.noel@ch-b.mssante.fr", paper=False)
    assert not (await resolver.resolve(loaded, "h.noel@ch-b.mssante.fr")).paper      # address-level overrides
    await store.set_preference(loaded, "8" + R2, preferred_mailbox="gone@ch-z.mssante.fr")
    r = await resolver.resolve(loaded, rcpt)
    assert r.address == "h.noel@ch-a.mssante.fr" and "no longer published" in r.reason


async def test_trust_space_address_absent_from_directory_is_flagged(loaded, resolver):
    await store.set_preference(loaded, "new.doctor@trusted.mssante.fr", paper=True)
    r = await resolver.resolve(loaded, "New.Doctor@trusted.mssante.fr")
    assert (r.address, r.method, r.kind, r.flagged, r.paper) == (
        "new.doctor@trusted.mssante.fr", "trust_space_unlisted", "unknown", True, True)


async def test_hub_local_address(loaded, resolver):
    r = await resolver.resolve(loaded, "postmaster@hub.example.org")
    assert (r.address, r.method, r.flagged) == ("postmaster@hub.example.org", "hub_local", False)


@pytest.mark.parametrize("rcpt, reason", [
    ("someone@gmail.com", "not an authorised MSSanté domain"),
    (f"12345@{RESOLUTION_DOMAIN}", "not a national id"),
    (f"899999999999@{RESOLUTION_DOMAIN}", "no published mailbox for the practitioner 899999999999"),
    ("not an address", "is not a mailbox address"),
])
async def test_unresolved(loaded, resolver, rcpt, reason):
    r = await resolver.resolve(loaded, rcpt)
    assert r.address is None and r.method == "unresolved" and not r.resolved
    assert reason in r.reason


async def test_preferences_survive_a_new_import(loaded, resolver, tmp_path):
    await store.set_preference(loaded, "jean.dupont@medecin.mssante.fr", paper=True)
    await import_file(loaded, write_mss(tmp_path / "second.txt", CRAFTED[:1] + CRAFTED[4:]), force=True)
    r = await resolver.resolve(loaded, "jean.dupont@medecin.mssante.fr")
    assert r.paper and r.method == "directory"
    assert (await resolver.resolve(loaded, "h.noel@ch-b.mssante.fr")).method == "trust_space_unlisted"
