"""A client that sends commands faster than it reads the replies: the hub's SMTP protocol stops reading commands
while its replies wait to be sent (asyncio flow control), and every reply goes out, in order, once the client
reads. A real socket pair with small buffers on both sides, the hub's protocol class and a plain handler."""

import asyncio
import socket

from hub.intake.protocol import HubSMTP

COMMANDS = 3000
PAD = "-" * 80


class Handler:
    def __init__(self):
        self.verified = 0

    async def handle_NOOP(self, server, session, envelope, arg):
        self.verified += 1
        # not a 250 (those are held while pipelined commands wait: push), and long enough for 3000 of them to
        # fill the transport's buffer past its high-water mark
        return f"252 2.0.0 OK {arg} {PAD}"


class Unlimited(HubSMTP):
    junk_limit = 10_000_000             # NOOP is limited between messages (100); here the flow is under test


async def test_replies_wait_for_a_slow_reader_and_none_is_lost_or_reordered():
    handler = Handler()
    make = Unlimited.factory(handler, hostname="hub.example.org", ident="hub ESMTP", enable_SMTPUTF8=True,
                           decode_data=False, command_call_limit={"*": 10_000_000})
    ours, theirs = socket.socketpair()
    for s in (ours, theirs):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    loop = asyncio.get_running_loop()
    transport, proto = await loop.connect_accepted_socket(make, ours)
    reader, writer = await asyncio.open_connection(sock=theirs)
    try:
        assert (await reader.readline()).startswith(b"220 ")
        writer.write(b"EHLO client.example\r\n" + b"".join(b"NOOP n%d\r\n" % i for i in range(COMMANDS))
                     + b"QUIT\r\n")
        for _ in range(100):                    # the replies pile up unread: the protocol pauses
            await asyncio.sleep(0.02)
            if proto._paused:
                break
        assert proto._paused
        await asyncio.sleep(0.3)
        assert handler.verified < COMMANDS      # ... and reads no further commands meanwhile
        while (await reader.readline())[3:4] == b"-":
            pass                                # the EHLO reply
        for i in range(COMMANDS):
            line = await asyncio.wait_for(reader.readline(), 30)
            assert line == b"252 2.0.0 OK n%d %s\r\n" % (i, PAD.encode())
        assert await reader.readline() == b"221 2.0.0 Bye\r\n"
        assert await reader.read() == b""
        assert handler.verified == COMMANDS
    finally:
        writer.close()
        transport.close()
        await asyncio.sleep(0)
