"""The directory's SQL. Connection-first functions; the caller owns the transaction.

Readers go through the views `directory_mailbox`, `directory_practitioner`, `directory_structure`,
`directory_activity` (current generation only, see migration 0010); writers address a physical slot table
(`directory_mailbox_b`, ...) whose name is built here from a validated slot letter, never from input.
Works as the runtime role (DML and TRUNCATE only) or as the admin role.
"""

from __future__ import annotations

from typing import Any, AsyncIterable, Iterable

import asyncpg

SOURCES = ("mssante", "ps")
TABLES = {"mssante": ("directory_mailbox",),
          "ps": ("directory_activity", "directory_practitioner", "directory_structure")}
IMPORT_LOCK = 727010                    # advisory lock serialising imports


def slot_table(base: str, slot: str) -> str:
    if slot not in ("a", "b") or base not in {t for ts in TABLES.values() for t in ts}:
        raise ValueError(f"bad slot table {base}_{slot}")
    return f"{base}_{slot}"


def other(slot: str) -> str:
    return "b" if slot == "a" else "a"


# -- generations and imports -----------------------------------------------------------------------------------

async def try_lock(conn: asyncpg.Connection) -> bool:
    return await conn.fetchval("SELECT pg_try_advisory_lock($1)", IMPORT_LOCK)


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.execute("SELECT pg_advisory_unlock($1)", IMPORT_LOCK)


async def current(conn: asyncpg.Connection, source: str) -> asyncpg.Record:
    """(slot, import_id, switched_at, loaded) of the generation readers see."""
    return await conn.fetchrow(
        "SELECT c.slot, c.import_id, c.switched_at, i.loaded FROM directory_current c"
        " LEFT JOIN directory_import i ON i.id = c.import_id WHERE c.source = $1", source)


async def begin_import(conn: asyncpg.Connection, source: str, file: str, slot: str) -> int:
    # Under the import lock, a row still 'loading' belongs to a process that died.
    await conn.execute("UPDATE directory_import SET status = 'failed', finished_at = now(),"
                       " message = 'interrupted' WHERE status = 'loading'")
    return await conn.fetchval("INSERT INTO directory_import (source, file, slot, status) VALUES ($1, $2, $3,"
                               " 'loading') RETURNING id", source, file, slot)


async def truncate_slot(conn: asyncpg.Connection, source: str, slot: str, *, lock_timeout: float = 10.0) -> None:
    """Empty the inactive slot, in its own short transaction (TRUNCATE takes an exclusive lock that readers of
    the views wait for; holding it for the whole load would stall lookups)."""
    tables = ", ".join(slot_table(t, slot) for t in TABLES[source])
    async with conn.transaction():
        await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")
        await conn.execute(f"TRUNCATE {tables}")


async def copy_rows(conn: asyncpg.Connection, table: str, columns: Iterable[str],
                    records: AsyncIterable[tuple], *, timeout: float) -> None:
    """COPY (binary) from an async iterable; `timeout` bounds the whole load (a pool's command_timeout would be
    far too short for a national file)."""
    await conn.copy_records_to_table(table, records=records, columns=list(columns), timeout=timeout)


async def derive_ps(conn: asyncpg.Connection, slot: str) -> None:
    """Practitioners and structures (sites) of a PS slot, from its activity lines."""
    act, prac, struct = (slot_table(t, slot) for t in TABLES["ps"][0:3])
    await conn.execute(f"""
        INSERT INTO {prac} (national_id, pp_id_type, pp_id, civility, last_name, first_name, profession_code,
                            profession_label, specialty_code, specialty_label, practice_modes, activities,
                            row_hash, search)
        SELECT f.national_id, f.pp_id_type, f.pp_id, f.civility, f.last_name, f.first_name, f.profession_code,
               f.profession_label, f.specialty_code, f.specialty_label, a.modes, a.n, a.h, f.pp_search
        FROM (SELECT DISTINCT ON (national_id) * FROM {act}
              ORDER BY national_id, specialty_code IS NULL, row_hash) f
        JOIN (SELECT national_id, string_agg(DISTINCT practice_mode, ',' ORDER BY practice_mode) AS modes,
                     count(*) AS n, bit_xor(row_hash) AS h
              FROM {act} GROUP BY national_id) a USING (national_id)""")
    await conn.execute(f"""
        INSERT INTO {struct} (structure_key, finess, siret, name, brand, address_lines, postcode, town, department,
                              sector_code, sector_label, search)
        SELECT DISTINCT ON (k) k, finess, siret, structure_name, structure_brand, address_lines, postcode, town,
               department, sector_code, sector_label, st_search
        FROM (SELECT coalesce('1' || finess, '3' || siret, 'T' || structure_tech_id) AS k, * FROM {act}) s
        WHERE k IS NOT NULL ORDER BY k, structure_name IS NULL, row_hash""")


async def analyze(conn: asyncpg.Connection, source: str, slot: str) -> None:
    """ANALYZE the freshly loaded slot (through directory_analyze(), SECURITY DEFINER: the runtime role does not
    own the tables). At commit this also invalidates readers' cached plans for the slot."""
    await conn.execute("SELECT directory_analyze($1, $2)", source, slot)


async def slot_count(conn: asyncpg.Connection, source: str, slot: str) -> int:
    base = "directory_mailbox" if source == "mssante" else "directory_practitioner"
    return await conn.fetchval(f"SELECT count(*) FROM {slot_table(base, slot)}")


async def diff(conn: asyncpg.Connection, source: str, old_slot: str, new_slot: str) -> tuple[int, int, int]:
    """(added, removed, changed) between two slots: by address for mailboxes, by national id for practitioners."""
    base, key = ("directory_mailbox", "address") if source == "mssante" else ("directory_practitioner",
                                                                                "national_id")
    row = await conn.fetchrow(f"""
        SELECT count(*) FILTER (WHERE o.{key} IS NULL) AS added,
               count(*) FILTER (WHERE n.{key} IS NULL) AS removed,
               count(*) FILTER (WHERE o.row_hash <> n.row_hash) AS changed
        FROM {slot_table(base, new_slot)} n FULL JOIN {slot_table(base, old_slot)} o ON o.{key} = n.{key}""")
    return row["added"], row["removed"], row["changed"]


async def switch(conn: asyncpg.Connection, source: str, slot: str, import_id: int) -> None:
    await conn.execute("UPDATE directory_current SET slot = $2, import_id = $3, switched_at = now()"
                       " WHERE source = $1", source, slot, import_id)


async def finish_import(conn: asyncpg.Connection, import_id: int, status: str, **facts: Any) -> None:
    cols = ("sha256", "lines", "loaded", "added", "removed", "changed", "rejected", "duplicates", "rejected_lines",
            "message")
    values = [facts.get(c) for c in cols]
    sets = ", ".join(f"{c} = coalesce(${i + 3}, {c})" for i, c in enumerate(cols))
    await conn.execute(f"UPDATE directory_import SET status = $2, finished_at = now(), {sets} WHERE id = $1",
                       import_id, status, *values)


async def imports(conn: asyncpg.Connection, limit: int = 10) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM directory_import ORDER BY id DESC LIMIT $1", limit)


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    row = await conn.fetchrow("""
        SELECT (SELECT count(*) FROM directory_mailbox) AS mailboxes,
               (SELECT count(*) FROM directory_mailbox WHERE mailbox_type = 'PER') AS per,
               (SELECT count(*) FROM directory_mailbox WHERE mailbox_type = 'ORG') AS org,
               (SELECT count(*) FROM directory_practitioner) AS practitioners,
               (SELECT count(*) FROM directory_structure) AS structures,
               (SELECT count(*) FROM directory_preference) AS preferences""")
    return dict(row)


# -- resolution (hot path: one indexed statement each; asyncpg prepares and caches them) -------------------------

RESOLVE_ADDRESS = """
    SELECT m.address, m.mailbox_type, m.national_id, m.structure_id,
           coalesce(pa.paper, pn.paper, false) AS paper,
           coalesce(pa.preferred_format, pn.preferred_format) AS preferred_format
    FROM directory_mailbox m
    LEFT JOIN directory_preference pa ON pa.key = m.address
    LEFT JOIN directory_preference pn ON pn.key = m.national_id
    WHERE m.address = $1"""

RESOLVE_NATIONAL_ID = """
    SELECT m.address, m.mailbox_type, m.structure_id, m.finess, m.siret,
           pa.paper AS address_paper, pa.preferred_format AS address_format,
           pn.paper AS person_paper, pn.preferred_format AS person_format, pn.preferred_mailbox
    FROM directory_mailbox m
    LEFT JOIN directory_preference pa ON pa.key = m.address
    LEFT JOIN directory_preference pn ON pn.key = $1
    WHERE m.national_id = $1"""


async def mailbox_by_address(conn: asyncpg.Connection, address: str) -> asyncpg.Record | None:
    return await conn.fetchrow(RESOLVE_ADDRESS, address)


async def mailboxes_by_national_id(conn: asyncpg.Connection, national_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(RESOLVE_NATIONAL_ID, national_id)


# -- operator preferences ---------------------------------------------------------------------------------------

async def preference(conn: asyncpg.Connection, key: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM directory_preference WHERE key = $1", key)


async def set_preference(conn: asyncpg.Connection, key: str, **changes: Any) -> asyncpg.Record:
    """Insert or update the given fields only (paper, preferred_format, preferred_mailbox, note); a value of
    None clears a text field."""
    allowed = ("paper", "preferred_format", "preferred_mailbox", "note")
    fields = [k for k in allowed if k in changes]
    cols = ", ".join(["key", *fields])
    params = ", ".join(f"${i + 1}" for i in range(len(fields) + 1))
    updates = ", ".join([*(f"{f} = excluded.{f}" for f in fields), "updated_at = now()"])
    return await conn.fetchrow(
        f"INSERT INTO directory_preference ({cols}) VALUES ({params}) ON CONFLICT (key) DO UPDATE SET {updates}"
        " RETURNING *", key, *(changes[f] for f in fields))


async def delete_preference(conn: asyncpg.Connection, key: str) -> bool:
    return await conn.fetchval("DELETE FROM directory_preference WHERE key = $1 RETURNING true", key) or False


async def preferences(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM directory_preference ORDER BY key")
