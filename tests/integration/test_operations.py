"""Operations: health and metrics over HTTP, delay notices, the strict operator-certificate check, dead letters."""

import email
import json
import urllib.error
import urllib.request

import asyncio

from tests.integration.conftest import PASSWORD
from tests.support import Client, Peer, free_port, message, wait_for

SENDER = "dpi@ch-test.example"


def get(url, token=None):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


async def test_health_metrics_and_admin_auth(start_hub, peer, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    base = f"http://127.0.0.1:{hub.http_port}"
    code, body = await asyncio.to_thread(get, base + "/healthz")
    health = json.loads(body)
    assert code == 200 and health["database"] == "ok" and health["trust_domains"] == 4
    def received(body: bytes) -> float:
        for line in body.decode().splitlines():
            if line.startswith('hub_messages_received_total{account="ch-test"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = received((await asyncio.to_thread(get, base + "/metrics"))[1])
    await Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD).send(
        SENDER, ["a@medecin.mssante.fr"], message())
    code, body = await asyncio.to_thread(get, base + "/metrics")
    assert code == 200 and received(body) == before + 1
    # the queue depth is sampled in the background

    async def depth_exported():
        return b'hub_queue_recipients{state="queued"}' in (await asyncio.to_thread(get, base + "/metrics"))[1]

    await wait_for(depth_exported, timeout=30)
    code, body = await asyncio.to_thread(get, base + "/api/queue")
    assert code == 401 and "error" in json.loads(body)
    code, body = await asyncio.to_thread(get, base + "/api/queue", "not-a-token")
    assert code == 401 and "error" in json.loads(body)
    code, body = await asyncio.to_thread(get, base + "/nope")
    assert code == 404 and "error" in json.loads(body)


async def test_delay_notice_once_while_retrying(start_hub, sender_mta, conn, pki):
    hub = await start_hub({"down.mssante.fr": free_port(), "ch-test.example": sender_mta.port_},
                          queue={"delay_warning": 1})
    code, text = await Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD).send(
        SENDER, ["x@down.mssante.fr"], message())
    await wait_for(lambda: sender_mta.messages, timeout=30)
    note = email.message_from_bytes(sender_mta.messages[0].content)
    status = [p for p in note.walk() if p.get_content_type() == "message/delivery-status"][0]
    assert [dict(b) for b in status.get_payload()][1]["Action"] == "delayed"
    mid = text.rsplit(" ", 1)[1]
    await wait_for(lambda: conn.fetchval("SELECT attempts >= 3 FROM recipient WHERE message_id = $1", mid), timeout=30)
    assert len(sender_mta.messages) == 1          # one delay notice, not one per attempt
    assert await conn.fetchval("SELECT state FROM recipient WHERE message_id = $1", mid) == "queued"


async def test_strict_mode_refuses_a_peer_whose_certificate_is_not_listed(start_hub, pki, conn, tmp_path):
    other = Peer(pki, server_cert=pki["hub_server"])      # valid certificate from the CA, but not the listed DN
    other.start()
    try:
        hub = await start_hub({"medecin.mssante.fr": other.port_}, delivery={"strict_operator_dn": True})
        code, text = await Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD).send(
            SENDER, ["a@medecin.mssante.fr"], message())
        mid = text.rsplit(" ", 1)[1]
        await wait_for(lambda: conn.fetchval("SELECT attempts > 0 FROM recipient WHERE message_id = $1", mid))
        assert (await conn.fetchval("SELECT last_reply FROM recipient WHERE message_id = $1", mid)).startswith("4.7.5")
        assert not other.messages
    finally:
        other.stop()


async def test_poison_message_goes_dead_and_the_worker_carries_on(start_hub, peer, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    c = Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)
    assert (await c.send(SENDER, ["a@medecin.mssante.fr"], message("good")))[0] == 250
    await wait_for(lambda: peer.messages)
    # a recipient whose deliveries crashed the worker again and again (its leases expired without an outcome)
    await conn.execute("INSERT INTO message (id, mail_from, state, size, body) VALUES ('poison', 'x@ch-test.example',"
                       " 'queued', 1, 'x')")
    await conn.execute("INSERT INTO recipient (message_id, rcpt, address, domain, state, recoveries)"
                       " VALUES ('poison', 'a@medecin.mssante.fr', 'a@medecin.mssante.fr', 'medecin.mssante.fr',"
                       " 'queued', 99)")
    await wait_for(lambda: conn.fetchval("SELECT state = 'dead' FROM recipient WHERE message_id = 'poison'"))
    assert "recovered" in await conn.fetchval("SELECT dead_reason FROM message WHERE id = 'poison'")
    assert len(peer.messages) == 1                          # never sent
    assert (await c.send(SENDER, ["b@medecin.mssante.fr"], message("after")))[0] == 250
    await wait_for(lambda: len(peer.messages) == 2)         # and the worker carries on


async def test_claim_takes_higher_priority_first(conn):
    from hub.queue import store

    for mid, prio in (("low", 0), ("high", 5)):
        await conn.execute("INSERT INTO message (id, mail_from, state, size, body) VALUES ($1, '', 'queued', 1, 'x')",
                           mid)
        await conn.execute("INSERT INTO recipient (message_id, rcpt, address, domain, state, priority)"
                           " VALUES ($1, 'a@b.fr', 'a@b.fr', 'b.fr', 'queued', $2)", mid, prio)
    first = await store.claim(conn, 1, 60, "test")
    assert [r["message_id"] for r in first] == ["high"]
    assert [r["message_id"] for r in await store.claim(conn, 5, 60, "test")] == ["low"]   # the leased one is skipped


async def test_running_hub_picks_up_a_new_trust_list(start_hub, conn, tmp_path):
    from hub.directory import trust
    from tests.support import trust_list_xml

    hub = await start_hub({})
    assert not hub.trust.is_trusted("nouveau.mssante.fr")
    xml = tmp_path / "new.xml"
    xml.write_bytes(trust_list_xml([("nouveau.mssante.fr", "CN=x"), ("medecin.mssante.fr", "CN=y")]))
    await trust.import_list(conn, xml, force=True)
    await wait_for(lambda: hub.trust.is_trusted("nouveau.mssante.fr"), timeout=30)   # without any SMTP traffic


async def test_graceful_stop_does_not_wait_for_watchers(start_hub, database, pki, tmp_path):
    """Stopping an idle hub returns once its work tasks are done; the rules watcher is cancelled, not waited for
    (it used to hold every stop for the whole grace period). The bound only detects that hang."""
    from hub.app import Hub
    from tests.support import settings_for

    hub = await Hub(settings_for(tmp_path, database.runtime_url, pki, {}), database.runtime_url).start()
    await asyncio.wait_for(hub.stop(grace=60), 30)
    assert all(t.done() for t in hub.tasks + hub.watchers)
