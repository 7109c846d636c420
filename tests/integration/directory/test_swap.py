"""The generation switch is atomic: lookups running during an import see the old directory or the new one,
never a missing entry and never a mix."""

import asyncio
import random

import asyncpg

from hub import db
from hub.directory import synth
from hub.directory.importer import import_file

from .conftest import write_mss

ROWS = 20000


async def test_lookups_during_an_import_see_old_or_new_never_a_mix(database, conn, tmp_path, resolver):
    gen1 = list(synth.mssante_lines(ROWS, seed=11, duplicate_every=0))
    gen2 = [line.replace("|Civil|", "|Civil (v2)|") for line in gen1]
    gen2 += list(synth.mssante_lines(ROWS + 500, seed=12, duplicate_every=0))[ROWS:]
    n1 = len({x.split("|")[1] for x in gen1})
    await import_file(conn, write_mss(tmp_path / "g1.txt", gen1))
    n2 = n1 + (await import_file(conn, write_mss(tmp_path / "g2.txt", gen2))).added
    await import_file(conn, write_mss(tmp_path / "g1.txt", gen1), force=True)   # back to gen1; both slots full
    assert n2 > n1

    per = [x.split("|") for x in gen1 if x.startswith("PER|")]
    sample = [(f[1].lower(), f[4]) for f in random.Random(1).sample(per, 200)]
    done = asyncio.Event()
    seen: list[list[str]] = [[] for _ in range(4)]
    problems: list[str] = []

    async def reader(k: int) -> None:
        c = await asyncpg.connect(database.runtime_url)
        await db._init_connection(c)
        rnd = random.Random(k)
        try:
            while True:
                finished = done.is_set()
                address, nid = rnd.choice(sample)
                r = await resolver.resolve(c, address)
                if r.method != "directory" or r.national_id != nid:
                    problems.append(f"{address}: {r}")
                row = await c.fetchrow(
                    "SELECT count(*) AS n, count(*) FILTER (WHERE category_label = 'Civil (v2)') AS v2"
                    " FROM directory_mailbox")
                if (row["n"], row["v2"]) == (n1, 0):
                    seen[k].append("old")
                elif (row["n"], row["v2"]) == (n2, sum(1 for x in gen2 if "|Civil (v2)|" in x)):
                    seen[k].append("new")
                else:
                    problems.append(f"mixed generation: {dict(row)}")
                if finished:
                    return
        finally:
            await c.close()

    readers = [asyncio.create_task(reader(k)) for k in range(4)]
    await asyncio.sleep(0.05)
    result = await import_file(conn, write_mss(tmp_path / "g2.txt", gen2))
    done.set()
    await asyncio.gather(*readers)

    assert result.added == n2 - n1 and result.changed == sum(1 for x in gen2 if "|Civil (v2)|" in x)
    assert problems == []
    for observed in seen:
        assert observed[0] == "old" and observed[-1] == "new"
        flips = sum(1 for a, b in zip(observed, observed[1:]) if a != b)
        assert flips == 1, observed                    # never back to the old generation
    assert sum(len(s) for s in seen) > 8               # the readers really ran during the import
