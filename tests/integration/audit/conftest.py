"""Fixtures for the audit tests: a superuser connection (to simulate tampering), a message "story" writer that records
the events the relay records, and an aiohttp client on the audit API."""

from __future__ import annotations

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hub import db
from hub.audit import tokens
from hub.audit.chain import AuditSealer
from hub.audit.patient import patient_key
from hub.audit.store import Event, record
from hub.settings import Settings
from hub.web import audit_api

KEY = bytes(range(32))


@pytest.fixture
def sealer():
    return AuditSealer(batch=1000, max_wait=5.0)


async def story(conn, mid: str, *, account="ch-a", sender="dpi@ch-a.example", recipients=("dr.x@medecin.mssante.fr",),
                ins: str | None = None, doc_type: str | None = None, rule_version: int | None = 1,
                outcome: str | None = "delivered", state: str = "done", key: bytes = KEY) -> None:
    """The events of one relayed message, as the relay records them, and its `message` row."""
    async with conn.transaction():
        await conn.execute("INSERT INTO message (id, account, mail_from, state, size) VALUES ($1, $2, $3, $4, 10)",
                           mid, account, sender, state)
        await record(conn, Event("received", message_id=mid, account=account, sender=sender,
                                 recipients=tuple(recipients), facts={"peer": "10.0.0.1", "tls": "TLSv1.3"}))
    events = []
    for r in recipients:
        events.append(Event("routed", message_id=mid, account=account, sender=sender, recipient=r,
                            rule_version=rule_version, facts={"rule_id": "default", "resolution": "directory"}))
    if ins or doc_type:
        events.append(Event("transformed", message_id=mid, account=account,
                            patient_key=patient_key(ins, key) if ins else None, doc_type=doc_type,
                            facts={"input_sha256": "ab" * 32, "output_sha256": "cd" * 32}))
    for r in recipients:
        if outcome:
            events.append(Event("delivery_attempted", message_id=mid, recipient=r,
                                facts={"attempt": 1, "reply": "250 ok", "tls": "TLSv1.3"}))
            events.append(Event(outcome, message_id=mid, recipient=r, facts={"reply": "250 ok"}))
    async with conn.transaction():
        await record(conn, *events)


async def seal(conn) -> int:
    """Seal what is committed (search keys are written by the sealer)."""
    return await AuditSealer().seal_once(conn)


@pytest.fixture
async def pool(database):
    p = await asyncpg.create_pool(database.runtime_url, min_size=1, max_size=5, init=db._init_connection)
    yield p
    await p.close()


@pytest.fixture
async def http(pool):
    app = web.Application()
    app["pool"] = pool
    app["settings"] = Settings()
    app["patient_key"] = KEY
    audit_api.setup(app)
    client = TestClient(TestServer(app))
    await client.start_server()
    yield client
    await client.close()


@pytest.fixture
async def make_token(conn):
    async def make(name: str, role: str = "auditor", account: str | None = None) -> str:
        _, secret = await tokens.create(conn, name, role, account, actor="test")
        return secret
    return make
