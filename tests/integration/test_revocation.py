"""Certificate revocation against the running hub: CRLs served by a local HTTP server (standing in for the
IGC-Santé download servers), made and signed with the test CA. A revoked peer certificate defers delivery with the
reason in the audit trail; a revoked establishment certificate is refused at login; a CRL that cannot be fetched,
is expired or is badly signed is handled per `revocation.unavailable`."""

import asyncio
import datetime as dt
import os
import subprocess
import sys

import pytest

from hub.audit.store import timeline
from tests.integration.conftest import PASSWORD
from tests.support import Client, CrlServer, Peer, RawSMTP, SigningCA, message, wait_for

SENDER = "dpi@ch-test.example"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAST = {"retry_interval": 1.0, "fetch_timeout": 5.0}


@pytest.fixture
async def crls():
    server = await CrlServer().start()
    yield server
    await server.stop()


@pytest.fixture
def ca(pki):
    return SigningCA(pki["ca"], pki["dir"])


@pytest.fixture
def revocable_peer(pki, ca, crls):
    """A trust-space operator whose server certificate names the local CRL server as distribution point."""
    cert, key, serial = ca.issue("peer-crl", crls.url, common_name="smtp.operator.example")
    p = Peer(pki, server_cert=(cert, key))
    p.start()
    p.serial = serial
    yield p
    p.stop()


async def deferred_reply(conn, mid: str, why: str = "") -> str:
    """The first `deferred` audit event's reply (that says `why`)."""
    async def found():
        replies = [e["facts"]["reply"] for e in await timeline(conn, mid) if e["event"] == "deferred"]
        return next((r for r in replies if why in r), None)
    return await wait_for(found, timeout=30)


async def test_revoked_peer_certificate_defers_delivery_with_the_reason(start_hub, revocable_peer, ca, crls, conn,
                                                                      pki, database):
    crls.body = ca.crl([revocable_peer.serial])
    hub = await start_hub({"medecin.mssante.fr": revocable_peer.port_}, revocation=FAST)
    mid = (await Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD).send(
        SENDER, ["dr.x@medecin.mssante.fr"], message()))[1].rsplit(" ", 1)[1]
    reply = await deferred_reply(conn, mid)
    assert reply.startswith("4.7.5") and "revoked" in reply and f"{revocable_peer.serial:#x}" in reply
    assert "keyCompromise" in reply or "key_compromise" in reply
    assert crls.url in reply and not revocable_peer.messages
    row = await conn.fetchrow("SELECT * FROM crl WHERE url = $1", crls.url)
    assert row["entries"] == 1 and row["der"] == crls.body and row["last_error"] is None          # cached
    updated = await conn.fetchval("SELECT facts FROM audit_event WHERE event = 'crl_updated'")
    assert updated["url"] == crls.url and updated["entries"] == 1
    # the CA lifts the revocation (a new CRL); the operator refreshes now instead of waiting for the schedule
    crls.body = ca.crl([])
    env = dict(os.environ, HUB_DATABASE_URL=database.runtime_url, HUB_DATABASE_ADMIN_URL=database.admin_url,
               HUB_DELIVERY_CA_FILE=str(pki["ca_file"]))
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "revocation", "refresh"], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and f"ok      {crls.url}" in out.stdout, out.stdout + out.stderr
    out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", "revocation", "status"], cwd=ROOT,
                                  env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith(f"ok          {crls.url}") and "0 revoked" in out.stdout
    await wait_for(lambda: revocable_peer.messages, timeout=30)         # reloaded by the hub, retried, delivered


async def test_unusable_crls_defer_delivery_per_policy(start_hub, revocable_peer, ca, crls, conn, pki):
    hub = await start_hub({"medecin.mssante.fr": revocable_peer.port_}, revocation=FAST)
    client = Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)
    now = dt.datetime.now(dt.timezone.utc)
    cases = [
        (503, b"", "HTTP 503"),                                                   # download server down
        (200, b"<html>maintenance</html>", "not a CRL"),
        (200, ca.crl([], this_update=now - dt.timedelta(days=3), next_update=now - dt.timedelta(days=1)),
         "expired at"),
        (200, ca.crl([], signer=SigningCA(pki["other_ca"], pki["dir"]).key), "signature does not verify"),
    ]
    for status, body, why in cases:
        crls.status, crls.body = status, body
        await conn.execute("UPDATE crl SET next_fetch_at = now()")             # fetched again at the next round
        mid = (await client.send(SENDER, ["dr.x@medecin.mssante.fr"], message(why)))[1].rsplit(" ", 1)[1]
        reply = await deferred_reply(conn, mid, why)              # (the first attempt may predate the refetch)
        assert reply.startswith("4.7.5") and "revocation status unknown" in reply, reply
    assert not revocable_peer.messages
    assert await conn.fetchval("SELECT count(*) FROM audit_event WHERE event = 'crl_fetch_failed'") >= 1


async def test_unavailable_crl_accepted_when_the_policy_says_so(start_hub, revocable_peer, crls, pki):
    crls.status = 503
    hub = await start_hub({"medecin.mssante.fr": revocable_peer.port_},
                          revocation={**FAST, "unavailable": "accept"})
    code, _ = await Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD).send(
        SENDER, ["dr.x@medecin.mssante.fr"], message())
    assert code == 250
    await wait_for(lambda: revocable_peer.messages)
    assert crls.requests >= 1


async def test_revoked_establishment_certificate_is_refused_at_login(start_hub, peer, ca, crls, conn, pki):
    revoked = ca.issue("est-revoked", crls.url, common_name="dpi.ch-revoque.example", organization="CH REVOQUE")
    good = ca.issue("est-good", crls.url, common_name="dpi.ch-valide.example", organization="CH VALIDE")
    for name, domain, cn, org in (("ch-revoque", "ch-revoque.example", "dpi.ch-revoque.example", "CH REVOQUE"),
                                  ("ch-valide", "ch-valide.example", "dpi.ch-valide.example", "CH VALIDE")):
        await conn.execute("INSERT INTO account (name, cert_subject, allow_from) VALUES ($1, $2, $3)",
                           name, f"CN={cn},O={org}", [domain])
    crls.body = ca.crl([revoked[2]])
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, revocation=FAST)
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"], client_cert=revoked[:2])
    code, text = await c.cmd(b"MAIL FROM:<dpi@ch-revoque.example>")
    assert code == 550 and text.startswith("550 5.7.1 Client certificate refused") and "revoked" in text, text
    await c.close()
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"], client_cert=good[:2])
    code, text = await c.send(b"dpi@ch-valide.example", [b"dr.x@medecin.mssante.fr"], message().replace(
        b"dpi@ch-test.example", b"dpi@ch-valide.example"))
    assert code == 250, text
    await c.close()
    crls.status = 503                                                           # and when the CRL is unusable
    await conn.execute("UPDATE crl SET next_update = now() - interval '1 minute', der = NULL, sha256 = NULL")
    hub.revocation.sources.clear()
    c = await RawSMTP.open(hub.smtp_port, pki["ca_file"], client_cert=good[:2])
    code, text = await c.cmd(b"MAIL FROM:<dpi@ch-valide.example>")
    assert code == 451 and text.startswith("451 4.7.0") and "HTTP 503" in text, text
    await c.close()
