"""systemd's readiness and watchdog protocol (sd_notify), spoken directly: one datagram to $NOTIFY_SOCKET.

`hub serve` sends READY=1 once every worker has started, WATCHDOG=1 from the supervisor's loop every half
$WATCHDOG_USEC (Type=notify and WatchdogSec= in deploy/hub.service), STATUS=... lines, and STOPPING=1 at SIGTERM.
Without $NOTIFY_SOCKET (not under systemd) every call does nothing.
"""

from __future__ import annotations

import os
import socket


def _address() -> str | None:
    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return None
    return "\0" + addr[1:] if addr[0] == "@" else addr


def notify(*lines: str) -> bool:
    """Send `lines` (e.g. "READY=1", "STATUS=...") in one datagram; False when there is no systemd to tell."""
    addr = _address()
    if addr is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(addr)
            sock.sendall("\n".join(lines).encode("utf-8", "replace"))
    except OSError:
        return False
    return True


def watchdog_interval() -> float | None:
    """Seconds between WATCHDOG=1 pings (half the configured timeout), or None when no watchdog is asked for."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6
