"""Shared fixtures: a real PostgreSQL (embedded, or HUB_TEST_DATABASE_URL), a fresh database per test made from a
migrated template, and a test PKI (trustme CA, server and client certificates).

Any unhandled exception in the event loop fails the test that was running (asyncpg's _testbase habit)."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from hub import db

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
if not SHARED.exists():
    SHARED = Path(os.environ.get("HUB_SHARED", "../shared")).resolve()


def _with_database(url: str, name: str, user: str | None = None) -> str:
    parts = urlsplit(url)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.split('@', 1)[-1]}" if "@" in netloc else f"{user}@{netloc}"
    return urlunsplit((parts.scheme, netloc, f"/{name}", parts.query, parts.fragment))


@dataclass
class PgCluster:
    admin_url: str                  # superuser / creator, database "postgres"
    runtime_user: str | None        # role the hub connects as (None: same as admin)
    template: str = "hub_test_template"

    def admin(self, database: str) -> str:
        return _with_database(self.admin_url, database)

    def runtime(self, database: str) -> str:
        return _with_database(self.admin_url, database, self.runtime_user)


@dataclass
class Database:
    name: str
    admin_url: str
    runtime_url: str


@pytest.fixture(scope="session")
def pg_cluster():
    external = os.environ.get("HUB_TEST_DATABASE_URL")
    tmp = None
    emb = None
    if external:
        cluster = PgCluster(admin_url=_with_database(external, "postgres"), runtime_user=None)
    else:
        tmp = Path(tempfile.mkdtemp(prefix="hubtest-"))
        emb = db.Embedded(tmp)
        emb.start()
        cluster = PgCluster(admin_url=emb.url("postgres", "postgres"), runtime_user=db.RUNTIME_ROLE)

    async def build_template():
        conn = await asyncpg.connect(cluster.admin_url)
        try:
            await conn.execute(f"DROP DATABASE IF EXISTS {cluster.template}")
            await conn.execute(f"CREATE DATABASE {cluster.template}")
        finally:
            await conn.close()
        await db.migrate(cluster.admin(cluster.template),
                         runtime_role=cluster.runtime_user)

    asyncio.run(build_template())
    yield cluster
    if emb is not None:
        emb.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
async def database(pg_cluster):
    name = "t_" + uuid.uuid4().hex[:12]
    conn = await asyncpg.connect(pg_cluster.admin_url)
    try:
        await conn.execute(f"CREATE DATABASE {name} TEMPLATE {pg_cluster.template}")
    finally:
        await conn.close()
    yield Database(name=name, admin_url=pg_cluster.admin(name), runtime_url=pg_cluster.runtime(name))
    conn = await asyncpg.connect(pg_cluster.admin_url)
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    finally:
        await conn.close()


async def _connection(url: str):
    c = await asyncpg.connect(url)
    await db._init_connection(c)
    return c


@pytest.fixture
async def conn(database):
    """A connection as the hub's runtime role."""
    c = await _connection(database.runtime_url)
    yield c
    await c.close()


@pytest.fixture
async def admin(database):
    """A connection as the admin (superuser on the embedded server): what tampering tests use."""
    c = await _connection(database.admin_url)
    yield c
    await c.close()


@pytest.fixture(autouse=True)
async def fail_on_loop_exceptions():
    """Fail the test if the event loop saw an unhandled exception (asyncpg's _testbase habit)."""
    loop = asyncio.get_running_loop()
    seen: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda lp, ctx: seen.append(ctx))
    yield
    loop.set_exception_handler(previous)
    if seen:
        pytest.fail(f"unhandled exception in the event loop: {seen[0].get('message')} {seen[0].get('exception')!r}")


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A test CA standing in for IGC-Santé, with server and client certificates."""
    import trustme

    base = tmp_path_factory.mktemp("pki")
    ca = trustme.CA(organization_name="Test IGC-Sante")
    other_ca = trustme.CA(organization_name="Not IGC-Sante")
    out = {"dir": base, "ca": ca, "other_ca": other_ca}
    ca.cert_pem.write_to_path(str(base / "ca.pem"))
    other_ca.cert_pem.write_to_path(str(base / "other-ca.pem"))

    def issue(name: str, *hostnames: str, authority=ca, **kwargs):
        cert = authority.issue_cert(*hostnames, **kwargs)
        cert.private_key_pem.write_to_path(str(base / f"{name}.key"))
        cert.cert_chain_pems[0].write_to_path(str(base / f"{name}.pem"))
        return base / f"{name}.pem", base / f"{name}.key"

    out["hub_server"] = issue("hub-server", "localhost", "127.0.0.1", "hub.example.org")
    out["hub_client"] = issue("hub-client", "hub.example.org",
                              organization_name="GIP HUB REGIONAL", common_name="hub.example.org")
    out["peer_server"] = issue("peer-server", "localhost", "127.0.0.1", "smtp.operator.example",
                               common_name="smtp.operator.example", organization_name="OPERATEUR TEST")
    out["establishment"] = issue("establishment", "ch-test.example",
                                 common_name="ch-test.example", organization_name="CH TEST")
    out["rogue_server"] = issue("rogue-server", "localhost", "127.0.0.1", authority=other_ca)
    out["ca_file"] = base / "ca.pem"
    return out
