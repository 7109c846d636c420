import asyncio

import pytest

from hub.app import Hub
from hub.directory import trust
from hub.intake import store
from hub.intake.auth import hash_password
from tests.support import Peer, settings_for, trust_list_xml

PASSWORD = "correct horse battery staple"
PEER_DN = "CN=smtp.operator.example,O=OPERATEUR TEST"


@pytest.fixture
def peer(pki):
    p = Peer(pki)
    p.start()
    yield p
    p.stop()


@pytest.fixture
def sender_mta(pki):
    """The establishment's own mail server, where notifications to its senders go (plain SMTP, local network)."""
    p = Peer(pki, tls=False)
    p.start()
    yield p
    p.stop()


@pytest.fixture
async def prepared(conn, tmp_path):
    """A test database with the establishment account and a small authorised-domains list."""
    await store.add_account(conn, "ch-test", password_hash=hash_password(PASSWORD), cert_subject=None,
                            networks=[], allow_from=["ch-test.example"], fallback_mailbox=None)
    xml = tmp_path / "liste.xml"
    xml.write_bytes(trust_list_xml([("medecin.mssante.fr", PEER_DN), ("labo.mssante.fr", PEER_DN),
                                    ("down.mssante.fr", PEER_DN), ("rogue.mssante.fr", PEER_DN)]))
    await trust.import_list(conn, xml, force=True)
    return conn


@pytest.fixture
async def start_hub(database, pki, tmp_path, prepared):
    hubs = []

    async def start(transport: dict[str, int], **sections) -> Hub:
        settings = settings_for(tmp_path, database.runtime_url, pki, transport, **sections)
        hub = await Hub(settings, database.runtime_url).start()
        hubs.append(hub)
        return hub

    yield start
    for h in hubs:
        await h.stop(grace=2)
    await asyncio.sleep(0)
