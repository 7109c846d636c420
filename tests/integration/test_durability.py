"""Never lose a message: PostgreSQL stopped during intake gives 451 and loses nothing already accepted."""

import asyncio
import shutil
import tempfile
from pathlib import Path

import asyncpg

from hub import db
from hub.app import Hub
from hub.directory import trust
from hub.intake import store
from hub.intake.auth import hash_password
from tests.integration.conftest import PASSWORD, PEER_DN
from tests.support import Client, message, settings_for, trust_list_xml, wait_for


async def test_database_stopped_during_intake(tmp_path, pki, peer):
    # not under pytest's tmp dir: a concurrent pytest session resets its parents to 0700, out of the
    # reach of the `hubpg` user the embedded server runs as when the tests run as root
    own = Path(tempfile.mkdtemp(prefix="hub-own-pg-"))
    emb = db.Embedded(own)
    await asyncio.to_thread(emb.start)
    admin, runtime = emb.url("postgres"), emb.url(db.RUNTIME_ROLE)
    await db.migrate(admin)
    conn = await asyncpg.connect(admin)
    await store.add_account(conn, "ch-test", password_hash=hash_password(PASSWORD), cert_subject=None, networks=[],
                            allow_from=["ch-test.example"], fallback_mailbox=None)
    xml = tmp_path / "liste.xml"
    xml.write_bytes(trust_list_xml([("medecin.mssante.fr", PEER_DN)]))
    await trust.import_list(conn, xml, force=True)
    await conn.close()
    settings = settings_for(tmp_path, runtime, pki, {"medecin.mssante.fr": peer.port_})
    hub = await Hub(settings, runtime).start()
    client = Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)
    try:
        code, text = await client.send("dpi@ch-test.example", ["a@medecin.mssante.fr"], message("before"))
        assert code == 250
        await asyncio.to_thread(emb.stop, "immediate")
        code, text = await client.send("dpi@ch-test.example", ["a@medecin.mssante.fr"], message("during"))
        assert (code, text[:5]) == (451, "4.3.0")
        await asyncio.to_thread(emb.start)
        code, text = await client.send("dpi@ch-test.example", ["a@medecin.mssante.fr"], message("after"),)
        assert code == 250, text
        await wait_for(lambda: {m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in peer.messages}
                       >= {b"before", b"after"}, timeout=30)
        subjects = [m.content.split(b"Subject: ")[1].split(b"\r\n")[0] for m in peer.messages]
        assert b"during" not in subjects       # refused with 451: the client still has it
    finally:
        await hub.stop(grace=2)
        await asyncio.to_thread(emb.stop, "immediate")
        shutil.rmtree(own, ignore_errors=True)
