"""Step timings of one SMTP session, hub and Postfix side by side: where a single sender's time goes.

    .venv/bin/python bench/steps.py [--sessions 400] [--size 5] [--no-postfix] [--processes N] [--keep]

The set-up is bench/relay.py's (sink, `hub serve` with embedded PostgreSQL and fsync on, a private Postfix when
installed and run as root). After a warm-up, --sessions sessions of one message each are run one after another,
alternating between the MTAs (so both see the same moments of the machine), each step waiting for its reply as a
sender without pipelining does: connect + greeting, EHLO, MAIL, RCPT, DATA (354), the message (250), QUIT (221).
Then the same number of messages over one reused connection (MAIL, RCPT, DATA pipelined, then the message).
Printed per MTA and step: p50 and p90 in ms, and the sum of the p50s; the load average before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _load  # noqa: E402
import relay  # noqa: E402

STEPS = ("connect+220", "EHLO", "MAIL", "RCPT", "DATA", "message", "QUIT")
REUSE_STEPS = ("MAIL+RCPT+DATA", "message")
LIMIT = 600.0          # seconds for all the sessions


async def _one_session(port: int, data: bytes, rcpt: str) -> list[float]:
    marks = [time.perf_counter()]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def step(line: bytes | None, want: int) -> None:
        if line is not None:
            writer.write(line)
        code, _ = await _load._reply(reader)
        if code != want:
            raise RuntimeError(f"{line!r} answered {code}")
        marks.append(time.perf_counter())

    try:
        await step(None, 220)
        await step(b"EHLO steps.bench.example\r\n", 250)
        await step(f"MAIL FROM:<{_load.SENDER}>\r\n".encode(), 250)
        await step(f"RCPT TO:<{rcpt}>\r\n".encode(), 250)
        await step(b"DATA\r\n", 354)
        await step(data, 250)
        await step(b"QUIT\r\n", 221)
    finally:
        writer.close()
    return [b - a for a, b in zip(marks, marks[1:])]


async def _reused(port: int, datas: list[bytes], rcpt: str) -> list[list[float]]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    await _load._reply(reader)
    writer.write(b"EHLO steps.bench.example\r\n")
    await _load._reply(reader)
    out = []
    env = f"MAIL FROM:<{_load.SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode()
    for data in datas:
        t0 = time.perf_counter()
        writer.write(env)
        for want in (250, 250, 354):
            code, _ = await _load._reply(reader)
            if code != want:
                raise RuntimeError(f"envelope answered {code}")
        t1 = time.perf_counter()
        writer.write(data)
        code, _ = await _load._reply(reader)
        if code != 250:
            raise RuntimeError(f"message answered {code}")
        out.append([t1 - t0, time.perf_counter() - t1])
        await asyncio.sleep(0.002)           # as the fresh sessions: the delivery of the last one may run
    writer.write(b"QUIT\r\n")
    await _load._reply(reader)
    writer.close()
    return out


async def _run(mtas, sessions: int, size_kb: int) -> dict:
    async with asyncio.timeout(LIMIT):
        return await _steps(mtas, sessions, size_kb)


async def _steps(mtas, sessions: int, size_kb: int) -> dict:
    body = _load.payload(size_kb * 1024)
    rcpt = f"steps@{_load.RCPT_DOMAIN}"
    fresh = {m.name: [] for m in mtas}
    for i in range(sessions):
        for m in mtas:
            fresh[m.name].append(await _one_session(m.port, _load.message("steps", i, rcpt, body), rcpt))
            await asyncio.sleep(0.002)       # a sender's pause between messages (its own work)
    reuse = {}
    for m in mtas:
        reuse[m.name] = await _reused(m.port, [_load.message("steps-r", i, rcpt, body) for i in range(sessions)],
                                      rcpt)
    return {"fresh": fresh, "reuse": reuse}


def _table(title: str, steps, per_mta: dict) -> str:
    out = [f"\n{title}", "| step, ms p50 / p90 | " + " | ".join(per_mta) + " |", "|---|" + "---|" * len(per_mta)]
    cols = {name: list(zip(*rows)) for name, rows in per_mta.items()}
    for k, step in enumerate(steps):
        cells = []
        for name in per_mta:
            xs = sorted(cols[name][k])
            cells.append(f"{statistics.median(xs) * 1000:.2f} / {xs[int(len(xs) * 0.9)] * 1000:.2f}")
        out.append(f"| {step} | " + " | ".join(cells) + " |")
    out.append("| sum of p50 | " + " | ".join(
        f"{sum(statistics.median(c) for c in cols[name]) * 1000:.2f}" for name in per_mta) + " |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=400)
    ap.add_argument("--size", type=int, default=5, help="message size in KB (default 5)")
    ap.add_argument("--no-postfix", action="store_true")
    ap.add_argument("--processes", type=int, default=0)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args(argv)
    postfix_bin = None if args.no_postfix or os.geteuid() != 0 else shutil.which("postfix")
    print(f"step bench: {os.cpu_count()} cores, load average {relay.loadavg()} at start")
    workdir = Path(tempfile.mkdtemp(prefix="hub-steps-bench-"))
    workdir.chmod(0o755)
    sink = hub = pf = None

    def on_term(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        sink = relay.Sink()
        hub = relay.HubMTA(workdir, sink.port, args.processes, None, (relay.ROOT / "routing_rules").resolve())
        hub.start()
        mtas = [hub]
        if postfix_bin:
            pf = relay.PostfixMTA(workdir, sink.port, postfix_bin)
            pf.start()
            mtas.append(pf)
        for n, m in enumerate(mtas):
            relay.measure(m, sink, 5, 10, relay.WARMUP, 100 + n, warmup=True)
        res = asyncio.run(_run(mtas, args.sessions, args.size))
        print(f"{args.sessions} sessions of one {args.size} KB message each, then {args.sessions} messages over one"
              f" connection; load average {relay.loadavg()} at the end")
        print(_table("one connection per message, each step waiting for its reply", STEPS, res["fresh"]))
        print(_table("one reused connection, envelope pipelined", REUSE_STEPS, res["reuse"]))
        return 0
    finally:
        for m in (pf, hub):
            if m is not None:
                m.stop()
        if sink is not None:
            sink.stop()
        if args.keep:
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
