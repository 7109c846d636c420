"""The auditor pages in headless Chromium (skipped when Chromium is not installed: `apt-get install chromium`)."""

import asyncio
import html
import shutil
import tempfile
from urllib.parse import urlencode

import pytest
from aiohttp import web

from hub.settings import Settings
from hub.web import audit_api
from tests.integration.audit.conftest import KEY, seal, story

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)")

INS = "277076322082910"


@pytest.fixture
async def server(pool):
    app = web.Application()
    app["pool"], app["settings"], app["patient_key"] = pool, Settings(), KEY
    audit_api.setup(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


async def dump_dom(url: str) -> str:
    with tempfile.TemporaryDirectory() as profile:
        proc = await asyncio.create_subprocess_exec(
            CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--dump-dom", url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_search_and_timeline_pages(server, conn, make_token):
    await story(conn, "m-one", account="ch-a", recipients=("dr.x@medecin.mssante.fr",), ins=INS, doc_type="11502-2")
    await story(conn, "m-two", account="ch-a", recipients=("dr.y@labo.mssante.fr",), outcome="bounced")
    await story(conn, "m-other", account="ch-b", ins=INS)
    await seal(conn)
    secret = await make_token("alice", account="ch-a")

    dom = await dump_dom(f"{server}/audit?" + urlencode({"token": secret, "patient_ins": INS}))
    assert dom.count('<tr class="message">') == 1            # m-other is outside the token's scope
    assert 'href="/audit/messages/m-one"' in dom and "11502-2" in dom and "dr.x@medecin.mssante.fr" in dom
    assert INS not in dom and "alice" in dom

    dom = await dump_dom(f"{server}/audit?" + urlencode({"token": secret, "status": "bounced"}))
    assert dom.count('<tr class="message">') == 1 and "m-two" in dom

    dom = await dump_dom(f"{server}/audit/messages/m-two?" + urlencode({"token": secret}))
    names = [html.unescape(part.split("<", 1)[0]) for part in dom.split('<td class="name">')[1:]]
    assert names == ["received", "routed", "delivery_attempted", "bounced"]
    assert "250 ok" in dom

    dom = await dump_dom(f"{server}/audit/messages/m-other?" + urlencode({"token": secret}))
    assert "Not found" in dom

    dom = await dump_dom(f"{server}/audit")                    # no token: the login form
    assert 'name="token"' in dom
    searched = await conn.fetchval("SELECT count(*) FROM audit_event WHERE event = 'audit_searched'"
                                   " AND actor = 'token:alice' AND facts->>'via' = 'web'")
    assert searched == 4
