"""The benchmark's load generator: N concurrent plain-SMTP sessions over raw asyncio streams, EHLO once per
connection, then per message MAIL/RCPT/DATA in one pipelined write (when the server offers PIPELINING), the
message and its terminating CRLF.CRLF in one write, and the 250 read. Connections stay open across messages.
With fresh=True (the way many sending systems work) each message gets its own connection, without pipelining:
connect, greeting, EHLO, MAIL, RCPT, DATA (each waiting for its reply), the message, QUIT.

Accept latency = from the write of the message with its final ".\r\n" to the complete reply to it.
Runs in its own process (multiprocessing); `run()` returns a plain dict for the parent.
Bounded: connect timeout, a timeout per message transaction, a deadline for the whole run.
"""

from __future__ import annotations

import asyncio
import socket
import time

SENDER = "bench@bench.example"
RCPT_DOMAIN = "sink.bench"
LINE = b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incid\r\n"   # 86 bytes


def payload(size: int) -> bytes:
    """The body after the headers, close to `size` bytes in total with headers (~300 bytes), CRLF ended, no line
    starting with a dot (so no dot-stuffing is needed)."""
    n = max(1, (size - 300) // len(LINE))
    return LINE * n


def message(tag: str, i: int, rcpt: str, body: bytes) -> bytes:
    head = (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: bench {tag} {i}\r\n"
            f"Message-ID: <{tag}.{i}@bench.example>\r\nX-Bench-Id: {tag}.{i}\r\n"
            f"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n").encode("ascii")
    return head + body + b".\r\n"


class ReplyError(Exception):
    pass


async def _reply(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    lines = []
    for _ in range(64):                       # bounded multi-line reply
        line = await reader.readline()
        if not line:
            raise ReplyError("connection closed")
        lines.append(line)
        if line[3:4] != b"-":
            break
    try:
        return int(lines[-1][:3]), b"".join(lines)
    except ValueError:
        raise ReplyError(f"bad reply {lines[-1][:60]!r}") from None


async def _load(host: str, port: int, tag: str, count: int, concurrency: int, size: int, *,
                txn_timeout: float, deadline: float, fresh: bool = False) -> dict:
    body = payload(size)
    next_i = 0
    accepted: list[int] = []
    latencies: list[float] = []
    refused: dict[str, int] = {}
    errors: dict[str, int] = {}
    first_send: list[float] = []
    sessions_open = 0

    def take() -> int | None:
        nonlocal next_i
        if next_i >= count:
            return None
        next_i += 1
        return next_i - 1

    def note(d: dict, key: str) -> None:
        d[key] = d.get(key, 0) + 1

    async def session(sid: int) -> None:
        nonlocal sessions_open
        i = None
        writer = None
        try:
            async with asyncio.timeout(30):
                reader, writer = await asyncio.open_connection(host, port, limit=1 << 16)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                code, _ = await _reply(reader)
                if code != 220:
                    note(errors, f"greeting {code}")
                    return
                writer.write(b"EHLO loadgen.bench.example\r\n")
                code, text = await _reply(reader)
                if code != 250:
                    note(errors, f"ehlo {code}")
                    return
            pipelining = b"PIPELINING" in text.upper() and not fresh
            sessions_open += 1
            while time.monotonic() < deadline:
                if fresh and i is not None:              # one message per connection: the next one reconnects
                    break
                i = take()
                if i is None:
                    break
                rcpt = f"rcpt{i % 1000}@{RCPT_DOMAIN}"
                data = message(tag, i, rcpt, body)
                async with asyncio.timeout(txn_timeout):
                    env = f"MAIL FROM:<{SENDER}>\r\nRCPT TO:<{rcpt}>\r\nDATA\r\n".encode("ascii")
                    if not first_send:
                        first_send.append(time.monotonic())
                    if pipelining:
                        writer.write(env)
                        c1, _ = await _reply(reader)
                        c2, _ = await _reply(reader)
                        c3, t3 = await _reply(reader)
                    else:
                        lines = env.split(b"\r\n")
                        writer.write(lines[0] + b"\r\n")
                        c1, _ = await _reply(reader)
                        writer.write(lines[1] + b"\r\n")
                        c2, _ = await _reply(reader)
                        writer.write(lines[2] + b"\r\n")
                        c3, t3 = await _reply(reader)
                    if c3 != 354:
                        note(refused, f"envelope {c1}/{c2}/{c3}")
                        writer.write(b"RSET\r\n")
                        await _reply(reader)
                        if c1 == 421 or c2 == 421 or c3 == 421:
                            return
                        continue
                    t0 = time.perf_counter()
                    writer.write(data)
                    code, _ = await _reply(reader)
                    lat = time.perf_counter() - t0
                if code == 250:
                    accepted.append(i)
                    latencies.append(lat)
                else:
                    note(refused, f"data {code}")
                    if code == 421:
                        return
                i = None if not fresh else i
            with _suppress():
                async with asyncio.timeout(5):
                    writer.write(b"QUIT\r\n")
                    await _reply(reader)
        except (TimeoutError, asyncio.TimeoutError):
            note(errors, "timeout")
        except (OSError, ReplyError, asyncio.IncompleteReadError) as exc:
            note(errors, f"{type(exc).__name__}: {exc}"[:80])
        finally:
            if writer is not None:
                writer.close()

    async def fresh_sessions(sid: int) -> None:
        while next_i < count and time.monotonic() < deadline and sum(errors.values()) < 100:
            await session(sid)

    started = time.monotonic()
    await asyncio.gather(*((fresh_sessions if fresh else session)(s) for s in range(concurrency)))
    ended = time.monotonic()
    return {"accepted": accepted, "latencies": latencies, "refused": refused, "errors": errors,
            "first_send": first_send[0] if first_send else started, "started": started, "ended": ended,
            "attempted": next_i}


class _suppress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return exc[0] is not None and issubclass(exc[0], (OSError, ReplyError, asyncio.TimeoutError, TimeoutError,
                                                          asyncio.IncompleteReadError))

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        return self.__exit__(*exc)


def run(host: str, port: int, tag: str, count: int, concurrency: int, size: int, max_seconds: float,
        result_conn, fresh: bool = False) -> None:
    """Process entry point: run the load, send the result dict through result_conn."""
    try:
        deadline = time.monotonic() + max_seconds
        result = asyncio.run(_load(host, port, tag, count, concurrency, size, txn_timeout=60.0,
                                   deadline=deadline, fresh=fresh))
    except BaseException as exc:   # report, never hang the parent
        result = {"fatal": f"{type(exc).__name__}: {exc}"}
    result_conn.send(result)
    result_conn.close()
