"""The AUTH failure limit of a whole hub: `hub serve` with two processes (the kernel spreads connections between
them, SO_REUSEPORT) on one database, and a second hub instance on the same database (another node): after
`smtp.auth_failures_per_minute` failures from an address, every process and node answers 421, even one that saw
fewer failures itself."""

import asyncio
import base64
import json
import os
import subprocess
import sys
import time
from collections import Counter

from hub.intake import store
from hub.intake.auth import hash_password
from tests.support import RawSMTP, free_port, settings_for

PASSWORD = "correct horse battery staple"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BAD = b"AUTH PLAIN " + base64.b64encode(b"\0ch-test\0not the password")
GOOD = b"AUTH PLAIN " + base64.b64encode(f"\0ch-test\0{PASSWORD}".encode())


def write_config(tmp_path, pki, smtp_port: int) -> os.PathLike:
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f"""
[hub]
data_dir = "{tmp_path / 'var'}"
processes = 2
[smtp]
listen = "127.0.0.1:{smtp_port}"
tls_cert = "{pki['hub_server'][0]}"
tls_key = "{pki['hub_server'][1]}"
auth_failures_per_minute = 3
[http]
listen = "127.0.0.1:{free_port()}"
""")
    return cfg


async def attempt(port: int, pki, line: bytes) -> int:
    c = await RawSMTP.open(port, pki["ca_file"])
    try:
        return (await c.cmd(line))[0]
    finally:
        await c.close()


async def wait_for_port(port: int, proc, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hub exited with {proc.returncode}"
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.2)
    raise AssertionError("hub did not open its SMTP port")


async def test_the_limit_holds_across_processes_and_nodes(database, conn, pki, tmp_path):
    await store.add_account(conn, "ch-test", password_hash=hash_password(PASSWORD), cert_subject=None, networks=[],
                            allow_from=["ch-test.example"], fallback_mailbox=None)
    port = free_port()
    cfg = write_config(tmp_path, pki, port)
    env = dict(os.environ, HUB_DATABASE_URL=database.runtime_url, HUB_DATABASE_ADMIN_URL=database.admin_url)
    log = open(tmp_path / "hub.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "hub", "--config", str(cfg), "serve"], cwd=ROOT, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    node = None
    try:
        await wait_for_port(port, proc)
        await asyncio.sleep(1.0)                               # both processes listening
        codes = [await attempt(port, pki, BAD) for _ in range(16)]
        assert codes == [535] * 3 + [421] * 13, codes
        assert await attempt(port, pki, GOOD) == 421           # the right password too, while blocked
        # another node on the same database agrees
        from hub.app import Hub

        node = await Hub(settings_for(tmp_path / "node", database.runtime_url, pki, {}), database.runtime_url,
                         http=False).start()
        assert await attempt(node.smtp_port, pki, BAD) == 421
        assert await attempt(node.smtp_port, pki, GOOD) == 421
    finally:
        if node is not None:
            await node.stop(grace=2)
        proc.terminate()
        proc.wait(30)
        log.close()
    events = [json.loads(line) for line in (tmp_path / "hub.log").read_bytes().splitlines()
              if line.startswith(b"{") and b'"auth_' in line]
    seen = Counter(e["pid"] for e in events if e["event"] in ("auth_failed", "auth_refused"))
    failed = Counter(e["pid"] for e in events if e["event"] == "auth_failed")
    assert sum(failed.values()) == 3 and len(seen) == 2, seen   # both processes answered some attempts
    # a process that saw fewer than 3 failures itself refused too: the count is the hub's, not the process's
    assert any(failed[pid] < 3 for pid in seen), (failed, seen)

