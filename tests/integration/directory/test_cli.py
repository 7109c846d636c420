"""`hub directory ...` run through hub.cli.main against the test database, and the HTTP lookup handler."""

import asyncio
import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub import cli, db
from hub.directory import http, synth
from hub.settings import Settings

from .conftest import CRAFTED, R1, R2, write_mss


@pytest.fixture
def hub_cmd(database, monkeypatch, capsys):
    monkeypatch.setenv("HUB_DATABASE_URL", database.runtime_url)
    monkeypatch.setenv("HUB_DATABASE_ADMIN_URL", database.admin_url)
    monkeypatch.delenv("HUB_CONFIG", raising=False)

    async def run(*argv: str) -> tuple[int, str, str]:
        code = await asyncio.to_thread(cli.main, ["directory", *argv])
        out, err = capsys.readouterr()
        return code, out, err
    return run


async def test_import_status_lookup_prefs(hub_cmd, tmp_path):
    code, out, err = await hub_cmd("import", str(write_mss(tmp_path / "Extraction_Correspondance_MSSante.txt",
                                                            CRAFTED)))
    assert code == 0, err
    assert "(mssante) as import #1: 5 mailboxes; added 5, removed 0, changed 0, rejected 0 line(s)" in out

    code, out, _ = await hub_cmd("lookup", "jean.dupont@medecin.mssante.fr", "--json")
    assert code == 0
    res = json.loads(out)["results"]
    assert [(r["kind"], r["matched"], r["national_id"]) for r in res] == [("mailbox", "address", "8" + R1)]

    # free text, accent- and case-insensitive, best (whole-word) matches first, each with its reason
    code, out, _ = await hub_cmd("lookup", "HELENE noël", "--json")
    by_text = json.loads(out)["results"]
    assert {r["address"] for r in by_text} == {"h.noel@ch-a.mssante.fr", "h.noel@ch-b.mssante.fr"}
    assert all(r["matched"] == "all words: helene noel" for r in by_text)
    code, out, _ = await hub_cmd("lookup", "hélè", "--json")
    assert {r["matched"] for r in json.loads(out)["results"]} == {"partial words: hele"}
    code, out, _ = await hub_cmd("lookup", R2)                    # bare RPPS, human output
    assert code == 0 and out.count("mailbox ") == 3 and "[national id]" in out
    code, out, _ = await hub_cmd("lookup", "750712184", "--json")  # FINESS
    assert {r["address"] for r in json.loads(out)["results"]} == {"h.noel@ch-a.mssante.fr",
                                                                   "urgences@ch-a.mssante.fr"}
    code, out, _ = await hub_cmd("lookup", "zzzz")
    assert code == 1 and "no match" in out

    code, out, _ = await hub_cmd("prefs", "set", R2, "--paper", "--preferred-mailbox", "h.noel@ch-b.mssante.fr",
                                 "--format", "PDF")
    assert code == 0 and out.strip() == f"8{R2}  paper only  format pdf  preferred mailbox h.noel@ch-b.mssante.fr"
    code, out, _ = await hub_cmd("resolve", f"{R2}@rpps.hub.example.org", "--json")
    r = json.loads(out)
    assert (code, r["address"], r["method"], r["paper"]) == (0, "h.noel@ch-b.mssante.fr", "national_id", True)
    code, out, err = await hub_cmd("prefs", "set", "h.noel@ch-b.mssante.fr", "--preferred-mailbox", "x@y.fr")
    assert code == 2 and "applies to a national id" in err
    code, out, _ = await hub_cmd("prefs", "list", "--json")
    assert [p["key"] for p in json.loads(out)] == ["8" + R2]

    code, out, _ = await hub_cmd("status", "--json")
    status = json.loads(out)
    assert status["current"]["mssante"]["import_id"] == 1 and status["counts"]["mailboxes"] == 5
    assert status["counts"]["preferences"] == 1 and status["imports"][0]["status"] == "done"


async def test_refused_file_exits_2_with_location(hub_cmd, tmp_path):
    path = synth.write(tmp_path / "cut.txt", rows=50, truncate_last=True)
    code, out, err = await hub_cmd("import", str(path))
    assert code == 2
    assert err.startswith("hub: error: cut.txt:51: truncated last line (no final newline)")
    code, out, _ = await hub_cmd("status")
    assert code == 0 and "refused" in out and "mssante current generation: none" in " ".join(out.split())


async def test_http_lookup(database, conn, tmp_path):
    from hub.directory.importer import import_file

    await import_file(conn, write_mss(tmp_path / "f.txt", CRAFTED))
    pool = await db.create_pool(database.runtime_url, Settings(), min_size=1, max_size=2)
    app = web.Application()
    app["pool"] = pool
    app.router.add_get("/api/directory/lookup", http.lookup)
    async with TestClient(TestServer(app)) as client:
        resp = await client.get("/api/directory/lookup", params={"q": "dupont lyon"})
        assert resp.status == 200
        body = await resp.json()
        assert [r["address"] for r in body["results"]] == ["jean.dupont@medecin.mssante.fr"]
        for params in ({}, {"q": "  "}, {"q": "x" * 201}, {"q": "---"}, {"q": "a", "limit": "x"}):
            resp = await client.get("/api/directory/lookup", params=params)
            assert resp.status == 400 and "error" in await resp.json(), params
    await pool.close()


async def test_undecodable_or_corrupt_files_get_file_line_and_reason(hub_cmd, tmp_path):
    """Bytes outside cp1252 in a header (0x81, 0x8d, 0x8f, 0x90, 0x9d), a corrupt or encrypted zip member: the
    operator gets `hub: error: FILE:LINE: why` and exit 2, never a traceback."""
    from hub.directory.formats import MSSANTE_HEADER, PS_HEADER_56

    header = tmp_path / "Extraction_Correspondance_MSSante.txt"
    header.write_bytes(("|".join(MSSANTE_HEADER)).encode("utf-8").replace(b"Type de BAL", b"Type de BAL\x81", 1)
                       + b"\n" + synth.mssante_line(type="PER", address="a@b.mssante.fr").encode() + b"\n")
    code, out, err = await hub_cmd("import", str(header))
    assert code == 2 and err.startswith(f"hub: error: {header.name}:1:") and "0x81" in err, err
    assert "Traceback" not in err
    ps = tmp_path / "PS_LibreAcces_Personne_activite.txt"
    ps.write_bytes(("|".join(PS_HEADER_56) + "|\n").encode("cp1252") + b"8|1|\x81\x8d\x90|" + b"|" * 53 + b"\n")
    code, out, err = await hub_cmd("import", str(ps), "--force")
    assert "Traceback" not in err and code in (0, 2), err
    good = write_mss(tmp_path / "Extraction_Correspondance_MSSante_2.txt", CRAFTED)
    import zipfile
    archive = tmp_path / "Extraction_Correspondance_MSSante.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(good, "Extraction_Correspondance_MSSante_202611220200.txt")
    data = bytearray(archive.read_bytes())
    start = data.index(b"Extraction_Correspondance_MSSante_202611220200.txt") + 60
    corrupt = tmp_path / "corrupt.zip"
    corrupt.write_bytes(bytes(data[:start]) + bytes(b ^ 0x5A for b in data[start:start + 200]) + bytes(data[start + 200:]))
    code, out, err = await hub_cmd("import", str(corrupt))
    assert code == 2 and "corrupt.zip" in err.splitlines()[0] and "cannot read" in err, err
    assert "Traceback" not in err
    encrypted = tmp_path / "encrypted.zip"
    data[6] |= 0x01                                   # the local header's "encrypted" flag
    cd = data.rindex(b"PK\x01\x02")
    data[cd + 8] |= 0x01                              # and the central directory's
    encrypted.write_bytes(bytes(data))
    code, out, err = await hub_cmd("import", str(encrypted))
    assert code == 2 and err.startswith(f"hub: error: {encrypted}:") and "is encrypted" in err, err
