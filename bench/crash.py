"""Crash battery: SIGKILL `hub serve` again and again under load, then count what was accepted, lost and delivered
twice.

    .venv/bin/python bench/crash.py [--kills 20] [--sessions 8] [--size 5] [--lease 5] [--processes 2]
                                    [--min-run 1.5] [--max-run 4] [--seed N] [--keep]

What runs (all on 127.0.0.1, plain SMTP): the bench sink (bench/_sink.py, counts messages by X-Bench-Id and records
each arrival), and `hub serve` (bench/relay.py's set-up: embedded PostgreSQL with fsync on, the shipped routing
rules, a network-bound account, `sink.bench` routed to the sink) with `delivery.lease_seconds` = --lease. A load of
--sessions pipelined SMTP sessions sends without pause; a session whose connection breaks reconnects. A message
counts as accepted when its 250 arrived. The battery then --kills times: lets the load run a random
[--min-run, --max-run] seconds, SIGKILLs the supervisor (its processes die with it; PostgreSQL stays up, as when
the hub's host process crashes), restarts `hub serve` on the same data directory and waits for its greeting. At
the end the load stops and the battery waits until every accepted message has reached the sink (recipients leased
by a killed process are sent again when their lease expires).

Printed: accepted, lost (accepted, never delivered), duplicates (deliveries beyond the first), unexpected
(delivered but never acknowledged to the load: the 250 was lost with the process; at-least-once on the sender's
side). Each duplicate is placed on the sink's clock: how far its first copy arrived from the nearest kill (in flight:
the peer had received it, the outcome was not yet recorded), and from the database: recoveries of the recipient
(claims whose lease expired). Exit 1 if anything accepted was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _load  # noqa: E402
import relay  # noqa: E402


class CrashHub(relay.HubMTA):
    name = "hub"

    def __init__(self, *args, lease: int, **kwargs):
        super().__init__(*args, **kwargs)
        self.lease = lease

    def _toml(self) -> str:
        toml = super()._toml()
        return toml.replace("[delivery]\n", f"[delivery]\nlease_seconds = {self.lease}\npoll_interval = 0.2\n", 1)

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)          # the supervisor; its processes die with it (PDEATHSIG)
        self.proc.wait(10)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:               # the workers are gone when the port is free again
            if not _hub_children_alive(self.proc.pid):
                break
            time.sleep(0.05)

    def restart(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "hub", "serve"], env=self.env(), cwd=str(self.dir),
                                     stdout=self.logf, stderr=subprocess.STDOUT, start_new_session=True)
        relay.wait_smtp(self.port, 120)


def _hub_children_alive(ppid: int) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if int(stat[stat.rindex(")") + 2:].split()[1]) == ppid:
                    return True
    return False


class Load:
    """--sessions pipelined SMTP sessions in a thread, sending until stopped, reconnecting when the hub is down."""

    def __init__(self, port: int, sessions: int, size: int):
        self.port = port
        self.sessions = sessions
        self.body = _load.payload(size * 1024)
        self.accepted: set[int] = set()
        self.next = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _session(self) -> None:
        while not self.stop.is_set():
            writer = None
            try:
                async with asyncio.timeout(10):
                    reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                    if (await _load._reply(reader))[0] != 220:
                        raise _load.ReplyError("greeting")
                    writer.write(b"EHLO crash.bench.example\r\n")
                    await _load._reply(reader)
                while not self.stop.is_set():
                    i = self.next
                    self.next += 1
                    rcpt = f"rcpt{i % 1000}@{_load.RCPT_DOMAIN}"
                    async with asyncio.timeout(20):
                        writer.write(f"MAIL FROM:<{_load.SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode())
                        codes = [(await _load._reply(reader))[0] for _ in range(3)]
                        if codes[2] != 354:
                            writer.write(b"RSET\r\n")
                            await _load._reply(reader)
                            await asyncio.sleep(0.1)
                            continue
                        writer.write(_load.message("k", i, rcpt, self.body))
                        code, _ = await _load._reply(reader)
                    if code == 250:
                        self.accepted.add(i)
                    else:
                        await asyncio.sleep(0.1)
            except (OSError, TimeoutError, asyncio.TimeoutError, _load.ReplyError, asyncio.IncompleteReadError):
                await asyncio.sleep(0.1)                 # the hub is down: try again
            finally:
                if writer is not None:
                    writer.close()

    async def _main(self) -> None:
        await asyncio.gather(*(self._session() for _ in range(self.sessions)))


def recoveries(hub: CrashHub, ids: list[str]) -> dict[str, int]:
    """Recipient recoveries per bench id (Message-ID header <k.N@bench.example> is not stored: map via the
    message's body is too costly; the X-Bench-Id is in the body, so look it up with position())."""
    async def q():
        import asyncpg
        conn = await asyncpg.connect(hub.admin_url(), timeout=10)
        try:
            rows = await conn.fetch(
                "SELECT substring(encode(substring(m.body from 1 for 2000), 'escape')"
                " from 'X-Bench-Id: (k\\.[0-9]+)') AS bench_id, max(r.recoveries) AS rec"
                " FROM message m JOIN recipient r ON r.message_id = m.id WHERE m.mail_from = $1 GROUP BY 1",
                _load.SENDER)
            return {r["bench_id"]: r["rec"] for r in rows if r["bench_id"] in ids}
        finally:
            await conn.close()
    try:
        return asyncio.run(q())
    except Exception as exc:          # the classification is a bonus
        print(f"(recoveries not read: {type(exc).__name__}: {exc})")
        return {}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--size", type=int, default=5, help="message size in KB (default 5)")
    ap.add_argument("--lease", type=int, default=5, help="delivery.lease_seconds (default 5)")
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--min-run", type=float, default=1.5)
    ap.add_argument("--max-run", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=12)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    rnd = random.Random(args.seed)
    print(f"crash battery: {args.kills} SIGKILLs of `hub serve` ({args.processes} processes), {args.sessions} "
          f"sessions, {args.size} KB, lease {args.lease} s; {os.cpu_count()} cores, load average "
          f"{relay.loadavg()}", flush=True)
    workdir = Path(tempfile.mkdtemp(prefix="hub-crash-bench-"))
    workdir.chmod(0o755)
    sink = hub = load = None
    try:
        sink = relay.Sink()
        hub = CrashHub(workdir, sink.port, args.processes, None, relay.ROOT / "routing_rules", lease=args.lease)
        hub.start()
        sink.ask("reset")
        load = Load(hub.port, args.sessions, args.size)
        load.thread.start()
        kills: list[float] = []
        for k in range(args.kills):
            time.sleep(rnd.uniform(args.min_run, args.max_run))
            t = time.monotonic()
            hub.kill()
            kills.append(t)
            hub.restart()
            print(f"  kill {k + 1}: {len(load.accepted)} accepted so far, restarted in "
                  f"{time.monotonic() - t:.1f} s", flush=True)
        time.sleep(2)
        load.stop.set()
        load.thread.join(30)
        accepted = set(load.accepted)
        deadline = time.monotonic() + 120 + args.lease * 3
        while time.monotonic() < deadline:
            arrivals = sink.ask("stats")["arrivals"]
            if all(f"k.{i}" in arrivals for i in accepted):
                break
            time.sleep(0.5)
        time.sleep(max(2.0, args.lease + 1.0))         # late copies of recovered recipients
        arrivals = sink.ask("stats")["arrivals"]
        got = {int(k[2:]): v for k, v in arrivals.items() if k.startswith("k.")}
        lost = sorted(i for i in accepted if i not in got)
        dups = {i: v for i, v in got.items() if len(v) > 1}
        n_dup = sum(len(v) - 1 for v in dups.values())
        unexpected = sum(1 for i in got if i not in accepted)
        print(f"accepted {len(accepted)}, lost {len(lost)}, duplicates {n_dup} ({len(dups)} messages), "
              f"unexpected {unexpected} (delivered, 250 lost with the process); {len(kills)} kills")
        if dups:
            # the copy sent by the killed process reached the sink just before (or, the sink's clock lagging,
            # just after) the kill; the second copy comes once the lease has expired, often after the next kill
            near = sorted(min(((times[0] - kt) * 1000 for kt in kills), key=abs) for times in dups.values())
            q = lambda p: near[min(len(near) - 1, int(p * len(near)))]   # noqa: E731
            print(f"duplicates: first copy {q(0.5):+.0f} ms from the nearest kill (median; {near[0]:+.0f} to "
                  f"{near[-1]:+.0f}); {sum(1 for b in near if abs(b) <= 50)} within 50 ms of a kill, "
                  f"{sum(1 for b in near if abs(b) <= 500)} within 500 ms")
            rec = recoveries(hub, [f"k.{i}" for i in dups])
            if rec:
                print(f"duplicates whose recipient was recovered (lease expired after a kill): "
                      f"{sum(1 for v in rec.values() if v > 0)} of {len(dups)}")
        print(f"per kill: {n_dup / max(1, len(kills)):.1f} duplicates; load average {relay.loadavg()}")
        return 1 if lost else 0
    except KeyboardInterrupt:
        return 130
    finally:
        if load is not None:
            load.stop.set()
        if hub is not None:
            with contextlib.suppress(Exception):
                hub.stop()
        if sink is not None:
            sink.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    mp.set_start_method("fork", force=True)
    sys.exit(main())
