"""RFC 3464 delivery status notifications: failure (bounce), delay and success, to the envelope sender.

Never to the null sender. NOTIFY=NEVER suppresses; without NOTIFY the default is failure and delay (RFC 3461
§4.1 leaves it to the MTA; Postfix does the same); success only when asked. The original is returned headers-only
unless the sender asked RET=FULL (health content is not echoed back by default).
Settings read: smtp.hostname.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from email.utils import format_datetime, formatdate, make_msgid
from datetime import datetime

ACTIONS = {"failure": "failed", "delay": "delayed", "success": "delivered"}
SUBJECTS = {
    "failure": "Undelivered Mail Returned to Sender / Message non distribué",
    "delay": "Delayed Mail (still being retried) / Message retardé",
    "success": "Successful Mail Delivery Report / Message distribué",
}


@dataclass(frozen=True)
class Report:
    address: str
    orcpt: str | None
    status: str              # e.g. 5.1.1
    diagnostic: str          # the remote reply or our reason
    remote_mta: str | None


def wants(kind: str, notify: str | None, mail_from: str) -> bool:
    if not mail_from:
        return False
    values = set((notify or "FAILURE,DELAY").split(","))
    if "NEVER" in values:
        return False
    return kind.upper() in values


def status_of(reply: str, kind: str) -> str:
    for token in reply.split()[:3]:
        parts = token.split(".")
        if len(parts) == 3 and all(p.isdigit() for p in parts) and parts[0] in "245":
            return token
    return {"failure": "5.0.0", "delay": "4.0.0", "success": "2.0.0"}[kind]


def build(kind: str, *, hostname: str, mail_from: str, original: bytes | None, reports: list[Report],
          envid: str | None, ret: str | None, arrival: datetime, original_id: str) -> bytes:
    boundary = f"hub-dsn-{secrets.token_hex(12)}"
    intro = {
        "failure": "Your message could not be delivered to the following recipient(s); the hub gave up.",
        "delay": "Your message has not yet been delivered to the following recipient(s); the hub keeps trying.",
        "success": "Your message was delivered to the following recipient(s).",
    }[kind]
    human = [f"This is the hub at {hostname}.", "", intro, ""]
    human += [f"<{r.address}>: {' '.join(r.diagnostic.split())}" for r in reports]
    per_msg = [f"Reporting-MTA: dns; {hostname}"]
    if envid:
        per_msg.append(f"Original-Envelope-Id: {envid}")
    per_msg.append(f"Arrival-Date: {format_datetime(arrival)}")
    blocks = ["\r\n".join(per_msg)]
    for r in reports:
        b = [f"Final-Recipient: rfc822; {r.address}"]
        if r.orcpt:
            b.append(f"Original-Recipient: {r.orcpt}")
        b += [f"Action: {ACTIONS[kind]}", f"Status: {r.status}"]
        if r.remote_mta:
            b.append(f"Remote-MTA: dns; {r.remote_mta}")
        if r.diagnostic:
            b.append(f"Diagnostic-Code: smtp; {' '.join(r.diagnostic.split())}")
        blocks.append("\r\n".join(b))
    headers = [
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>",
        f"To: <{mail_from}>",
        f"Subject: {SUBJECTS[kind]}",
        f"Date: {formatdate(localtime=True)}",
        f"Message-ID: {make_msgid(idstring=secrets.token_hex(4), domain=hostname)}",
        "Auto-Submitted: auto-replied",
        f"X-Hub-Original-Queue-Id: {original_id}",
        "MIME-Version: 1.0",
        f'Content-Type: multipart/report; report-type=delivery-status; boundary="{boundary}"',
    ]
    out = ["\r\n".join(headers), "", "This is a MIME-encapsulated delivery status notification.", "",
           f"--{boundary}", "Content-Type: text/plain; charset=utf-8", "Content-Transfer-Encoding: 8bit", "",
           "\r\n".join(human), "",
           f"--{boundary}", "Content-Type: message/delivery-status", "", "\r\n\r\n".join(blocks), ""]
    body = "\r\n".join(out).encode("utf-8")
    if original is not None:
        if ret == "FULL":
            part = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + original
        else:
            head = original.split(b"\r\n\r\n", 1)[0] + b"\r\n"
            part = b"Content-Type: text/rfc822-headers\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + head
        body += f"--{boundary}\r\n".encode() + part
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return body
