"""The benchmark's receiving MTA: a minimal, fast asyncio SMTP server (plain SMTP, PIPELINING) that counts
messages by their `X-Bench-Id` header and records each arrival time (time.monotonic(), which is system-wide on
Linux, so comparable with the load generator's clock).

DATA is read in chunks (no per-line work): the server only looks for CRLF.CRLF across chunk boundaries and keeps
the first few kB to find the id header. It runs in its own process, driven by the parent through a Pipe:
    ("reset",)  -> forget everything counted so far          -> "ok"
    ("stats",)  -> {"arrivals": {id: [t, ...]}, "other": n}   (ids as str)
    ("stop",)   -> exit
Only listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import time

_ID = re.compile(rb"\r\nX-Bench-Id: ([A-Za-z0-9._-]+)\r\n")
_HEAD_KEEP = 8192
_MAX_LINE = 4096


class Counter:
    def __init__(self):
        self.arrivals: dict[str, list[float]] = {}
        self.other = 0          # messages without an id header
        self.total = 0

    def add(self, head: bytes, t: float) -> None:
        self.total += 1
        m = _ID.search(head)
        if m is None:
            self.other += 1
            return
        key = m.group(1).decode("ascii")
        lst = self.arrivals.get(key)
        if lst is None:
            self.arrivals[key] = [t]
        else:
            lst.append(t)


class SinkProtocol(asyncio.Protocol):
    def __init__(self, counter: Counter):
        self.counter = counter
        self.transport = None
        self.buf = b""
        self.in_data = False
        self.head = b""
        self.tail = b""

    def connection_made(self, transport):
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.write(b"220 sink.bench ESMTP bench sink\r\n")

    def data_received(self, data: bytes) -> None:
        if self.in_data:
            self._data(data)
        else:
            self.buf += data
        self._commands()

    def _data(self, data: bytes) -> None:
        """Consume DATA content; on the terminator switch back to commands with the rest in self.buf."""
        if len(self.head) < _HEAD_KEEP:
            self.head += data[:_HEAD_KEEP]
        window = self.tail + data
        idx = window.find(b"\r\n.\r\n")
        if idx < 0:
            self.tail = window[-4:]
            return
        # the terminator ends at idx + 5 in window; the rest is pipelined commands
        rest = window[idx + 5:]
        self.in_data = False
        self.counter.add(b"\r\n" + self.head, time.monotonic())
        self.head = b""
        self.tail = b""
        self.transport.write(b"250 2.0.0 Ok: queued\r\n")
        self.buf = rest

    def _commands(self) -> None:
        out = []
        while not self.in_data:
            nl = self.buf.find(b"\r\n")
            if nl < 0:
                if len(self.buf) > _MAX_LINE:
                    out.append(b"500 5.5.2 Line too long\r\n")
                    self.buf = b""
                break
            line = self.buf[:nl]
            self.buf = self.buf[nl + 2:]
            verb = line[:4].upper()
            if verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                out.append(b"250 2.0.0 Ok\r\n")
            elif verb == b"DATA":
                out.append(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                self.in_data = True
                self.head = b""
                self.tail = b"\r\n"
                if out:
                    self.transport.write(b"".join(out))
                    out = []
                if self.buf:
                    rest, self.buf = self.buf, b""
                    self._data(rest)
            elif verb in (b"EHLO", b"HELO"):
                if verb == b"EHLO":
                    out.append(b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SIZE 104857600\r\n"
                               b"250 ENHANCEDSTATUSCODES\r\n")
                else:
                    out.append(b"250 sink.bench\r\n")
            elif verb == b"QUIT":
                out.append(b"221 2.0.0 Bye\r\n")
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            else:
                out.append(b"502 5.5.2 Command not implemented\r\n")
        if out:
            self.transport.write(b"".join(out))


def run(port: int, ctrl) -> None:
    """Process entry point: serve on 127.0.0.1:port, obey ctrl (a multiprocessing Connection)."""
    asyncio.run(_main(port, ctrl))


async def _main(port: int, ctrl) -> None:
    loop = asyncio.get_running_loop()
    counter = Counter()
    server = await loop.create_server(lambda: SinkProtocol(counter), "127.0.0.1", port, backlog=1024,
                                      reuse_address=True)
    stop = asyncio.Event()

    def on_ctrl():
        try:
            while ctrl.poll():
                cmd = ctrl.recv()
                if cmd[0] == "reset":
                    counter.arrivals = {}
                    counter.other = 0
                    counter.total = 0
                    ctrl.send("ok")
                elif cmd[0] == "stats":
                    ctrl.send({"arrivals": counter.arrivals, "other": counter.other, "count": counter.total})
                elif cmd[0] == "count":
                    ctrl.send(counter.total)
                elif cmd[0] == "stop":
                    stop.set()
                    return
        except (EOFError, OSError):
            stop.set()

    loop.add_reader(ctrl.fileno(), on_ctrl)
    ctrl.send(("ready", os.getpid()))
    await stop.wait()
    loop.remove_reader(ctrl.fileno())
    server.close()
