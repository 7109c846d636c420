"""The authorised-domains list and the relay CLI: real snapshot, broken files refused with the reason, bad
arguments get a message and a non-zero exit."""

import asyncio
import os
import re
import subprocess
import sys

import pytest

from hub.directory import trust
from hub.errors import ImportFileError
from tests.support import SHARED

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SNAPSHOT = SHARED / "data" / "listeblanchemssante.xml"


def run_cli(database, *args, stdin: str | None = None):
    env = dict(os.environ, HUB_DATABASE_URL=database.runtime_url, HUB_DATABASE_ADMIN_URL=database.admin_url)
    return subprocess.run([sys.executable, "-m", "hub", *args], input=stdin, text=True, capture_output=True,
                          cwd=ROOT, env=env, timeout=120)


async def test_real_snapshot_imports_all_entries_despite_the_missing_closing_tag(conn):
    assert not SNAPSHOT.read_bytes().rstrip().endswith(b"</ListeBlancheMSSante>")
    result = await trust.import_list(conn, SNAPSHOT)
    # 6,554 entries, one of them unusable (`Nom` sessad@ase.ditepbeziers.mssante.fr is not a domain): skipped
    assert (result.entries, result.domains, len(result.skipped)) == (6553, 5001, 1)
    assert await conn.fetchval("SELECT count(*) FROM trust_domain WHERE list_id = $1", result.list_id) == 6553
    space = trust.TrustSpace(["hub.example.org"], [])
    await space.load(conn)
    assert space.is_trusted("15-20.mssante.fr") and space.is_trusted("MSSANTE.APICRYPT.ORG")
    assert not space.is_trusted("gmail.com")
    assert len(space.operator_dns("15-20.mssante.fr")) >= 3      # one entry per authorised certificate


async def test_broken_lists_never_replace_the_current_one(conn, tmp_path):
    good = await trust.import_list(conn, SNAPSHOT)
    data = SNAPSHOT.read_bytes()
    cut = data.index(b"<DNCertificatOperateur>", len(data) // 2)
    truncated = tmp_path / "truncated.xml"
    truncated.write_bytes(data[:cut])                          # stops in the middle of an entry
    empty = tmp_path / "empty.xml"
    empty.write_bytes(b"")
    other = tmp_path / "other.xml"
    other.write_bytes(b"<?xml version='1.0'?><html><body>503 Service Unavailable</body></html>")
    for path, why in ((truncated, "truncated"), (empty, "empty"), (other, "not an MSSant")):
        with pytest.raises(ImportFileError) as err:
            await trust.import_list(conn, path)
        assert why in str(err.value) and str(path) in str(err.value)
    assert await conn.fetchval("SELECT id FROM trust_list WHERE current") == good.list_id
    assert await conn.fetchval("SELECT count(*) FROM trust_list") == 1


async def test_trust_cli_reports_file_and_reason(database, tmp_path):
    bad = tmp_path / "liste.xml"
    bad.write_bytes(SNAPSHOT.read_bytes()[:5000])
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(bad))
    assert out.returncode == 2
    assert out.stderr.startswith(f"hub: error: {bad}:") and "truncated" in out.stderr
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(SNAPSHOT))
    assert out.returncode == 0 and "6553 entries, 5001 domains" in out.stdout
    assert "skipped entry at line" in out.stderr and "sessad@ase.ditepbeziers.mssante.fr" in out.stderr


async def test_a_list_cut_after_a_domaine_never_replaces_the_current_one(database, conn, tmp_path):
    """The battery's case: cut after a `</Domaine>` at 80 %, imported with exit 0 and 1,026 domains gone."""
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(SNAPSHOT))
    assert out.returncode == 0, out.stderr
    data = SNAPSHOT.read_bytes()
    cut = tmp_path / "liste-80.xml"
    cut.write_bytes(data[:data.index(b"</Domaine>", len(data) * 8 // 10) + len(b"</Domaine>")] + b"\n")
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(cut))
    assert out.returncode == 2 and out.stderr.startswith(f"hub: error: {cut}:") and "truncated" in out.stderr
    out = await asyncio.to_thread(run_cli, database, "trust", "import", "--force", str(cut))
    assert out.returncode == 2 and "truncated" in out.stderr          # damage is never forced through
    assert await conn.fetchval("SELECT count(*) FROM trust_list") == 1
    assert await conn.fetchval("SELECT domains FROM trust_list WHERE current") == 5001


def _without_domains(data: bytes, count: int) -> bytes:
    """The real file minus every entry of the first `count` distinct domains (still well-formed)."""
    entries = re.findall(rb"\s*<Domaine>.*?</Domaine>", data, re.S)
    names = []
    for e in entries:
        name = re.search(rb"<Nom>([^<]*)</Nom>", e).group(1)
        if name not in names:
            names.append(name)
        if len(names) > count:
            break
    drop = set(names[:count])
    kept = [e for e in entries if re.search(rb"<Nom>([^<]*)</Nom>", e).group(1) not in drop]
    head = data[:data.index(entries[0])]
    return head + b"".join(kept) + b"\n    </ListeDomaines>\n"


async def test_a_list_removing_more_than_a_small_share_needs_force(database, conn, tmp_path):
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(SNAPSHOT))
    assert out.returncode == 0, out.stderr
    data = SNAPSHOT.read_bytes()
    big = tmp_path / "liste-6pc.xml"
    big.write_bytes(_without_domains(data, 300))                       # 6 % of 5,001 domains
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(big))
    assert out.returncode == 2 and "removes 300 of the 5001 current domains" in out.stderr
    assert "trust.max_removed_ratio" in out.stderr and "--force" in out.stderr
    small = tmp_path / "liste-4pc.xml"
    small.write_bytes(_without_domains(data, 200))                     # 4 %: an ordinary update
    out = await asyncio.to_thread(run_cli, database, "trust", "import", str(small))
    assert out.returncode == 0 and "(+0 -200)" in out.stdout, out.stderr
    out = await asyncio.to_thread(run_cli, database, "trust", "import", "--force", str(big))
    assert out.returncode == 0 and "(+0 -100)" in out.stdout, out.stderr
    forced = await conn.fetchval("SELECT facts FROM audit_event WHERE event = 'trust_list_imported'"
                                 " ORDER BY id DESC LIMIT 1")
    assert forced["forced"] is True and forced["removed"] == 100


async def test_the_checksum_published_beside_the_list_is_checked(database, tmp_path):
    import hashlib

    good = hashlib.sha256(SNAPSHOT.read_bytes()).hexdigest()
    out = await asyncio.to_thread(run_cli, database, "trust", "import", "--sha256", "00" * 32, str(SNAPSHOT))
    assert out.returncode == 2 and f"SHA-256 {good} differs" in out.stderr
    out = await asyncio.to_thread(run_cli, database, "trust", "import", "--sha256", good.upper(), str(SNAPSHOT))
    assert out.returncode == 0, out.stderr


async def test_accounts_cli(database, conn):
    out = await asyncio.to_thread(run_cli, database, "accounts", "add", "ch-x", "--password-stdin",
                                  "--allow-from", "ch-x.example", stdin="short\n")
    assert out.returncode == 2 and "at least 12 characters" in out.stderr
    out = await asyncio.to_thread(run_cli, database, "accounts", "add", "ch-x", "--network", "10.0.0.300/8",
                                  "--allow-from", "ch-x.example")
    assert out.returncode == 2 and "not a network" in out.stderr
    out = await asyncio.to_thread(run_cli, database, "accounts", "add", "ch-x", "--password-stdin",
                                  "--allow-from", "ch-x.example", stdin="a long enough secret\n")
    assert out.returncode == 0, out.stderr
    stored = await conn.fetchval("SELECT password_hash FROM account WHERE name = 'ch-x'")
    assert stored.startswith("scrypt$") and "a long enough secret" not in stored
    out = await asyncio.to_thread(run_cli, database, "accounts", "disable", "nobody")
    assert out.returncode == 2 and "no account named 'nobody'" in out.stderr


def test_bad_configuration_names_the_key(tmp_path):
    cfg = tmp_path / "hub.toml"
    cfg.write_text("[smtp]\nlisten = 'nowhere'\n")
    out = subprocess.run([sys.executable, "-m", "hub", "--config", str(cfg), "queue", "list"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "smtp.listen" in out.stderr
    cfg.write_text("[smtp]\nlisen = '127.0.0.1:25'\n")
    out = subprocess.run([sys.executable, "-m", "hub", "--config", str(cfg), "queue", "list"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "unknown setting smtp.lisen" in out.stderr
