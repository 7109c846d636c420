"""Directory benchmark: import a generated 535,000-row Extraction_Correspondance_MSSante file and time 10,000
resolutions.

    python bench/directory.py [--rows 535000] [--resolutions 10000] [--database-url URL] [--zip]

Without --database-url it starts its own embedded PostgreSQL in a temporary directory (hub.db.Embedded). The
import runs in a child process (this script with --child), so its peak RSS (ru_maxrss) is the import's alone.
Prints: import wall time (target < 30 s), import peak RSS (target < 300 MB), resolution p50 / p99 (target p99 < 2 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub import db  # noqa: E402
from hub.directory import synth  # noqa: E402
from hub.directory.resolve import Resolver  # noqa: E402

RESOLUTION_DOMAIN = "rpps.hub.example.org"


async def _child(url: str, path: str) -> None:
    from hub.directory.importer import import_file

    conn = await db.connect(url)
    await db._init_connection(conn)
    backend = await conn.fetchval("SELECT pg_backend_pid()")
    backend_cpu = _proc_cpu(backend)
    started = time.perf_counter()
    result = await import_file(conn, path)
    seconds = time.perf_counter() - started
    backend_cpu = _proc_cpu(backend) - backend_cpu
    await conn.close()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"seconds": seconds, "maxrss_kb": usage.ru_maxrss, "cpu": usage.ru_utime + usage.ru_stime,
                      "backend_cpu": backend_cpu, "loaded": result.loaded, "duplicates": result.duplicates,
                      "rejected": result.rejected}))


def _proc_cpu(pid: int) -> float:
    """CPU seconds of a local process (the PostgreSQL backend), from /proc; 0 where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _import(url: str, path: Path) -> dict:
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, __file__, "--child", str(path), "--database-url", url],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"import failed:\n{proc.stderr}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["wall"] = time.perf_counter() - started
    return out


async def _resolutions(url: str, path: Path, n: int) -> list[tuple[str, float]]:
    rnd = random.Random(42)
    addresses, nids = [], []
    with open(path, encoding="utf-8") as fh:
        next(fh)
        for i, line in enumerate(fh):
            if i % 50 == 0:
                f = line.split("|")
                addresses.append(f[1].lower())
                if f[4]:
                    nids.append(f[4])
    queries = []
    for _ in range(n):
        x = rnd.random()
        if x < 0.7:
            queries.append(rnd.choice(addresses))
        elif x < 0.9:
            queries.append(f"{rnd.choice(nids)}@{RESOLUTION_DOMAIN}")
        elif x < 0.95:
            queries.append(f"unlisted{rnd.randrange(10**6)}@trusted.mssante.fr")
        else:
            queries.append(f"someone{rnd.randrange(10**6)}@example.com")
    resolver = Resolver(resolution_domain=RESOLUTION_DOMAIN, hub_domains=["hub.example.org"],
                        is_trusted_domain=lambda d: d == "trusted.mssante.fr")
    conn = await db.connect(url)
    await db._init_connection(conn)
    try:
        for q in queries[:500]:                                  # warm-up: caches, prepared statements
            await resolver.resolve(conn, q)
        timings = []
        for q in queries:
            t = time.perf_counter()
            r = await resolver.resolve(conn, q)
            timings.append((r.method, (time.perf_counter() - t) * 1000))
    finally:
        await conn.close()
    return timings


async def _settle(admin_url: str) -> None:
    conn = await db.connect(admin_url)
    try:
        await conn.execute("VACUUM ANALYZE directory_mailbox_a, directory_mailbox_b, directory_current,"
                           " directory_preference")
    finally:
        await conn.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=535_000)
    ap.add_argument("--resolutions", type=int, default=10_000)
    ap.add_argument("--database-url", help="an existing, migrated database (default: embedded, temporary)")
    ap.add_argument("--zip", action="store_true", help="import the zipped file, as published")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        asyncio.run(_child(a.database_url, a.child))
        return 0

    tmp = Path(tempfile.mkdtemp(prefix="hub-bench-dir-"))
    emb = None
    try:
        if a.database_url:
            url = a.database_url
        else:
            emb = db.Embedded(tmp / "data")
            emb.start()
            asyncio.run(db.migrate(emb.url("postgres")))
            url = emb.url(db.RUNTIME_ROLE)
        t = time.perf_counter()
        text = synth.write(tmp / "Extraction_Correspondance_MSSante.txt", rows=a.rows, seed=1)
        path = synth.write(tmp / "Extraction_Correspondance_MSSante.zip", rows=a.rows, seed=1, zip=True) \
            if a.zip else text
        gen = time.perf_counter() - t
        print(f"generated {a.rows} rows in {gen:.1f} s: {path.name}, {path.stat().st_size / 1e6:.1f} MB"
              f" (text {text.stat().st_size / 1e6:.1f} MB)")
        first = _import(url, path)
        print(f"import (empty directory): {first['seconds']:.1f} s in the importer, {first['wall']:.1f} s wall "
              f"including process start [target < 30 s]; loaded {first['loaded']}, duplicates "
              f"{first['duplicates']}, rejected {first['rejected']}")
        print(f"import peak RSS: {first['maxrss_kb'] / 1024:.0f} MB [target < 300 MB]")
        print(f"import CPU: importer process {first['cpu']:.1f} s, PostgreSQL backend {first['backend_cpu']:.1f} s "
              f"(load average now {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")
        second = _import(url, path)
        print(f"re-import (full directory, diff against the previous generation): {second['seconds']:.1f} s, "
              f"peak RSS {second['maxrss_kb'] / 1024:.0f} MB")
        if emb is not None:    # let autovacuum finish with the fresh generation: measure the steady state
            asyncio.run(_settle(emb.url("postgres")))
        by_method = asyncio.run(_resolutions(url, text, a.resolutions))
        timings = [ms for _, ms in by_method]
        q = statistics.quantiles(timings, n=100)
        print(f"resolution: {len(timings)} lookups, p50 {statistics.median(timings):.3f} ms, p99 {q[98]:.3f} ms, "
              f"max {max(timings):.3f} ms [target p99 < 2 ms] (load average {os.getloadavg()[0]:.1f})")
        for method in sorted({m for m, _ in by_method}):
            ms = [t for m, t in by_method if m == method]
            print(f"  {method:22} {len(ms):5}  p50 {statistics.median(ms):.3f} ms  "
                  f"p99 {statistics.quantiles(ms, n=100)[98]:.3f} ms")
    finally:
        if emb is not None:
            emb.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
