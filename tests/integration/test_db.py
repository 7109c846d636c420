"""The database layer against a real PostgreSQL."""

import asyncpg
import pytest

from hub import db


async def test_migrations_are_recorded_and_idempotent(database):
    applied = await db.migrate(database.admin_url)
    assert applied == []  # the template already has them all
    conn = await asyncpg.connect(database.admin_url)
    try:
        names = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations ORDER BY version")]
    finally:
        await conn.close()
    assert names == [name for _, name, _ in db.migration_files()]


async def test_runtime_role_cannot_rewrite_audit(database, pg_cluster):
    if pg_cluster.runtime_user is None:
        pytest.skip("external test database without a separate runtime role")
    conn = await asyncpg.connect(database.runtime_url)
    try:
        await conn.execute("INSERT INTO audit_event (event) VALUES ('test')")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("UPDATE audit_event SET event = 'forged'")
        with pytest.raises(asyncpg.exceptions.InsufficientPrivilegeError):
            await conn.execute("DELETE FROM audit_event")
    finally:
        await conn.close()
