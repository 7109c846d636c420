"""Imports of generated files in the real layouts: counts, history, audit, refusals, zip, PS_LibreAcces."""

import zipfile

import pytest

from hub.directory import store, synth
from hub.directory.importer import import_file
from hub.errors import ImportFileError

from .conftest import CRAFTED, write_mss


def _set(lines):
    return {line.split("|")[1].lower() for line in lines}


async def test_counts_between_generations_and_history(conn, tmp_path):
    gen1 = list(synth.mssante_lines(2000, seed=7, duplicate_every=0))
    first = await import_file(conn, write_mss(tmp_path / "g1.txt", gen1))
    assert (first.loaded, first.added, first.removed, first.changed, first.rejected) == (2000, 2000, 0, 0, 0)
    slot = (await store.current(conn, "mssante"))["slot"]       # analysed by the runtime role before the switch
    assert await conn.fetchval("SELECT reltuples FROM pg_class WHERE relname = $1", f"directory_mailbox_{slot}") \
        == 2000

    changed = [line.replace("|Civil|", "|Civil (modifié)|") for line in gen1[20:50]]
    added = list(synth.mssante_lines(2010, seed=99, duplicate_every=0))[2000:]   # other seed: other addresses
    added = [line for line in added if line.split("|")[1] not in _set(gen1)][:5]
    gen2 = gen1[10:20] + changed + gen1[50:] + added                             # first 10 removed
    second = await import_file(conn, write_mss(tmp_path / "g2.txt", gen2))
    n_changed = sum(1 for a, b in zip(gen1[20:50], changed) if a != b)
    assert (second.added, second.removed, second.changed) == (len(added), 10, n_changed)
    assert second.loaded == len(_set(gen2)) == await conn.fetchval("SELECT count(*) FROM directory_mailbox")

    history = await store.imports(conn)
    assert [(h["id"], h["status"], h["loaded"]) for h in history] == [
        (second.import_id, "done", second.loaded), (first.import_id, "done", 2000)]
    assert (await store.current(conn, "mssante"))["import_id"] == second.import_id
    events = await conn.fetch("SELECT facts FROM audit_event WHERE event = 'directory_imported' ORDER BY id")
    facts = [e["facts"] if isinstance(e["facts"], dict) else __import__("json").loads(e["facts"]) for e in events]
    assert [(f["added"], f["removed"], f["changed"], f["rejected"]) for f in facts] == [
        (2000, 0, 0, 0), (len(added), 10, n_changed, 0)]


async def test_duplicates_and_a_few_malformed_lines_are_reported_not_fatal(conn, tmp_path):
    path = synth.write(tmp_path / "f.txt", rows=5000, seed=1, malformed=8)
    r = await import_file(conn, path)
    assert r.rejected == 8 and len(r.rejected_lines) == 8 and r.duplicates == 1
    assert r.loaded == 5000 - 8 - 1
    row = await conn.fetchrow("SELECT rejected, rejected_lines FROM directory_import WHERE id = $1", r.import_id)
    assert row["rejected"] == 8 and row["rejected_lines"] == r.rejected_lines


async def _refused(conn, path, match, **kw):
    before = await conn.fetchval("SELECT count(*) FROM directory_import")
    with pytest.raises(ImportFileError, match=match):
        await import_file(conn, path, **kw)
    if "header" in path.name:                # unknown kind: audited, but no import row
        assert await conn.fetchval("SELECT count(*) FROM directory_import") == before
        return None
    row = (await store.imports(conn, 1))[0]
    assert row["status"] == "refused" and row["message"]
    return row


async def test_broken_files_are_refused_and_the_directory_stays(conn, tmp_path, resolver):
    good = await import_file(conn, write_mss(tmp_path / "good.txt", CRAFTED))

    bad_header = tmp_path / "bad_header.txt"
    bad_header.write_text("Adresse|Nom\nx@y.fr|X\n", encoding="utf-8")
    await _refused(conn, bad_header, r"^bad_header\.txt:1: not an Extraction_Correspondance_MSSante")

    lines = list(synth.mssante_lines(3000, seed=2))
    await _refused(conn, synth.write(tmp_path / "cut.txt", lines=lines, truncate_last=True),
                   r"^cut\.txt:3001: truncated last line \(no final newline\)")
    await _refused(conn, synth.write(tmp_path / "cut.zip", lines=lines, truncate_last=True, zip=True),
                   r"^cut\.zip:Extraction_Correspondance_MSSante_\d+\.txt:3001: truncated last line")
    short = lines[:-1] + ["|".join(lines[-1].split("|")[:12])]
    await _refused(conn, write_mss(tmp_path / "short.txt", short), r"^short\.txt:3001: truncated last line: 12 col")
    row = await _refused(conn, synth.write(tmp_path / "noisy.txt", rows=3000, seed=2, malformed=300),
                         r"^noisy\.txt:\d+: 300 of 3000 lines malformed \(more than 1\.0%\)")
    assert row["rejected"] == 300 and len(row["rejected_lines"]) == 10

    r = await resolver.resolve(conn, "jean.dupont@medecin.mssante.fr")
    assert r.method == "directory"
    assert (await store.current(conn, "mssante"))["import_id"] == good.import_id
    assert await conn.fetchval("SELECT count(*) FROM directory_mailbox") == good.loaded
    assert await conn.fetchval("SELECT count(*) FROM audit_event WHERE event = 'directory_import_refused'") == 5


async def test_a_shrinking_file_needs_force(conn, tmp_path):
    await import_file(conn, synth.write(tmp_path / "big.txt", rows=1000, seed=4))
    small = synth.write(tmp_path / "small.txt", rows=300, seed=4)
    await _refused(conn, small, r"would shrink the directory from 1000 to 300 entries")
    r = await import_file(conn, small, force=True)
    assert r.removed == 700


async def test_zip_as_published(conn, tmp_path):
    path = synth.write(tmp_path / "Extraction_Correspondance_MSSante.zip", rows=1500, seed=5, zip=True)
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["Extraction_Correspondance_MSSante_202608260213.txt"]
    r = await import_file(conn, path)
    assert r.source == "mssante" and r.loaded == 1500 and r.file.endswith(".zip:" + zf.namelist()[0])


@pytest.mark.parametrize("columns", [56, 48])
async def test_ps_libreacces_builds_practitioners_and_structures(conn, tmp_path, columns):
    path = synth.write(tmp_path / "PS_LibreAcces.zip", kind="ps", rows=500, columns=columns, zip=True)
    r = await import_file(conn, path)
    activities = await conn.fetchval("SELECT count(*) FROM directory_activity")
    practitioners = await conn.fetchval("SELECT count(DISTINCT national_id) FROM directory_activity")
    assert (r.source, r.lines, activities, r.loaded, r.added) == ("ps", 500, 500, practitioners, practitioners)
    p0 = await conn.fetchrow("SELECT * FROM directory_practitioner WHERE national_id = $1", "8" + synth.rpps(0))
    assert p0["last_name"] == "MARTIN" and p0["activities"] == 2 and p0["practice_modes"] == "S"
    assert await conn.fetchval("SELECT count(*) FROM directory_structure") > 10
    # the mailbox generation is independent of the PS one
    assert (await store.current(conn, "mssante"))["import_id"] is None
