"""Session bench: the CPU instructions one SMTP session costs the hub's protocol engine (hub.intake.protocol),
counted by valgrind, so that a change to the command loop can be measured on a shared machine.

    .venv/bin/python bench/session.py [--size 5] [--sessions 100,600] [--base DIR] [--commands N] [--bare]

What runs: `HubSMTP` (this tree's, or that of --base DIR: another checkout, e.g. `git archive main | tar -x -C
DIR`) on uvloop, under `valgrind --tool=cachegrind`, with a handler whose hooks answer at once (the intake
handler's EHLO list, 250 to MAIL, RCPT and DATA): no PostgreSQL, no policy, no delivery. The load generator of
bench/relay.py (bench/_load.py, its own process, not counted) sends one message of --size KB per connection
without pipelining: greeting, EHLO, MAIL, RCPT, DATA, the message, QUIT. The server runs twice, for each number of
--sessions; printed: user-space instructions per session = the difference of the two totals over the difference
of the sessions (what start-up and shutdown cost cancels out). With --commands N: one session of N `RSET`s, each
waiting for its reply, against one of 0; printed per command. With --bare: a bare asyncio Protocol answering the
same commands with fixed replies instead of HubSMTP (what uvloop and the sockets cost alone). Instruction counts
move by well under 1 % between runs whatever else the machine does (its 2 virtual cores have no hardware
counters for `perf stat`).
Needs valgrind (Debian package valgrind).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _load  # noqa: E402


class _Handler:
    def __init__(self, done_after: int, done):
        self.left = done_after
        self.done = done

    async def handle_EHLO(self, server, session, envelope, hostname, responses):   # as hub.intake.handler's
        session.host_name = hostname
        offered = [r for r in responses[:-1] if r != "250-SMTPUTF8"]
        return offered + ["250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250-DSN", responses[-1]]

    async def handle_MAIL(self, server, session, envelope, address, dsn):
        return "250 2.1.0 Sender OK"

    async def handle_RCPT(self, server, session, envelope, address, options):
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Recipient OK"

    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 queued as X"

    async def handle_QUIT(self, server, session, envelope):
        self.left -= 1
        if self.left <= 0 and not self.done.done():
            asyncio.get_running_loop().call_later(0.2, self.done.set_result, None)
        return "221 2.0.0 Bye"


class _Bare(asyncio.Protocol):
    """The same dialogue with fixed replies: no StreamReader, no coroutine, no checks."""

    def __init__(self, handler: _Handler):
        self.handler, self.buf, self.data = handler, b"", False

    def connection_made(self, transport):
        self.transport = transport
        transport.write(b"220 hub.example.org hub ESMTP\r\n")

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                self.buf, self.data = self.buf[end + 5:], False
                self.transport.write(b"250 2.0.0 queued as X\r\n")
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            verb, self.buf = self.buf[:4].upper(), self.buf[end + 2:]
            if verb == b"EHLO":
                self.transport.write(b"250-hub.example.org\r\n250-SIZE 31457280\r\n250-8BITMIME\r\n250-PIPELINING\r\n"
                                     b"250-ENHANCEDSTATUSCODES\r\n250-DSN\r\n250 HELP\r\n")
            elif verb == b"MAIL":
                self.transport.write(b"250 2.1.0 Sender OK\r\n")
            elif verb == b"RCPT":
                self.transport.write(b"250 2.1.5 Recipient OK\r\n")
            elif verb == b"DATA":
                self.buf, self.data = b"\r\n" + self.buf, True
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"RSET":
                self.transport.write(b"250 2.0.0 OK\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.close()
                asyncio.ensure_future(self.handler.handle_QUIT(None, None, None))
                return


def serve(port: int, sessions: int, bare: bool = False) -> None:
    """The server process (run under valgrind): stops 0.2 s after the last session's QUIT."""
    import uvloop

    from hub.intake.protocol import HubSMTP

    async def main():
        done = asyncio.get_running_loop().create_future()
        handler = _Handler(sessions, done)
        make = (lambda: _Bare(handler)) if bare else HubSMTP.factory(
            handler, hostname="hub.example.org", ident="hub ESMTP", tls_context=None, require_starttls=False,
            auth_require_tls=True, data_size_limit=30 << 20, enable_SMTPUTF8=True, decode_data=False, timeout=300,
            command_call_limit={"AUTH": 5, "STARTTLS": 2, "NOOP": 100, "*": 10_000_000})
        await asyncio.get_running_loop().create_server(make, "127.0.0.1", port)
        print("ready", flush=True)
        await done

    uvloop.run(main())


async def _commands(port: int, n: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _load._reply(reader)
    writer.write(b"EHLO session.bench.example\r\n")
    await _load._reply(reader)
    for _ in range(n):
        writer.write(b"RSET\r\n")
        await _load._reply(reader)
    writer.write(b"QUIT\r\n")
    await _load._reply(reader)
    writer.close()


def count(source: Path, sessions: int, size_kb: int, commands: int | None, workdir: Path, bare: bool = False) -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = workdir / f"cachegrind.{sessions}.{commands}"
    env = dict(os.environ, PYTHONPATH=str(source) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONHASHSEED="0")
    server = subprocess.Popen(["valgrind", "--tool=cachegrind", "--cache-sim=no", f"--cachegrind-out-file={out}",
                               sys.executable, str(Path(__file__).resolve()), "--serve", str(port),
                               str(1 if commands is not None else sessions)] + (["--bare"] if bare else []),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=str(source))
    try:
        if server.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the server did not start: {server.communicate(timeout=60)[1][-2000:]}")
        if commands is not None:
            asyncio.run(_commands(port, commands))
        else:
            parent, child = mp.get_context("fork").Pipe()
            load = mp.get_context("fork").Process(target=_load.run, args=(
                "127.0.0.1", port, "s", sessions, 1, size_kb * 1024, 900, child, True))
            load.start()
            result = parent.recv()
            load.join()
            if len(result["accepted"]) != sessions:
                raise RuntimeError(f"{len(result['accepted'])} of {sessions} sessions accepted: {result['errors']}")
        err = server.communicate(timeout=900)[1]
    finally:
        if server.poll() is None:
            server.kill()
    m = re.search(r"I\s+refs:\s+([\d,]+)", err)
    if not m:
        raise RuntimeError(f"no instruction count from valgrind: {err[-2000:]}")
    return int(m.group(1).replace(",", ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=5, help="message size in KB (default 5)")
    ap.add_argument("--sessions", default="100,600", help="the two numbers of sessions (default 100,600)")
    ap.add_argument("--commands", type=int, default=None, help="instead: one session of N RSETs against one of 0")
    ap.add_argument("--base", type=Path, action="append", default=[],
                    help="another source tree to count as well (repeatable)")
    ap.add_argument("--bare", action="store_true",
                    help="a bare asyncio Protocol with fixed replies instead of the hub's protocol")
    ap.add_argument("--serve", nargs=2, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve:
        serve(*args.serve, bare=args.bare)
        return 0
    if not shutil.which("valgrind"):
        print("session bench: valgrind is not installed (apt-get install valgrind)", file=sys.stderr)
        return 2
    try:
        low, high = (int(x) for x in args.sessions.split(","))
    except ValueError:
        ap.error("--sessions: two numbers, e.g. 100,600")
    if not 0 < low < high:
        ap.error("--sessions: two numbers, the first smaller, both above 0")
    trees = [*args.base, HERE.parent] if not args.bare else [HERE.parent]
    for tree in trees:
        if not (tree / "hub" / "intake" / "protocol.py").is_file():
            ap.error(f"{tree}: no hub/intake/protocol.py there")
    workdir = Path(tempfile.mkdtemp(prefix="hub-session-bench-"))
    try:
        for tree in trees:
            if args.commands is not None:
                a = count(tree.resolve(), 1, args.size, 0, workdir, args.bare)
                b = count(tree.resolve(), 1, args.size, args.commands, workdir, args.bare)
                name = "bare asyncio Protocol" if args.bare else tree
                print(f"{name}: {(b - a) / args.commands:,.0f} instructions per RSET and its reply"
                      f" (0 commands: {a:,}; {args.commands}: {b:,})", flush=True)
            else:
                a = count(tree.resolve(), low, args.size, None, workdir, args.bare)
                b = count(tree.resolve(), high, args.size, None, workdir, args.bare)
                name = "bare asyncio Protocol" if args.bare else tree
                print(f"{name}: {(b - a) / (high - low):,.0f} instructions per session of one {args.size} KB"
                      f" message ({low} sessions: {a:,}; {high}: {b:,})", flush=True)
        return 0
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
