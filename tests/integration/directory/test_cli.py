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
