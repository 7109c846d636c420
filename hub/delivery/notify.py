"""Queue a delivery status notification (built by hub.delivery.dsn) as a new message from the null sender to the
original envelope sender, with its audit events. Used by the delivery stage (bounces, delays, successes) and the
processing stage (rule rejections after DATA, failed transformations)."""

from __future__ import annotations

import secrets
import time

from hub import observability as obs
from hub.audit.store import Event
from hub.delivery import dsn
from hub.intake.store import NewMessage, NewRecipient, insert_message


def new_message_id() -> str:
    """Time-ordered, unique across processes: 11 hex digits of milliseconds + 10 random hex digits."""
    return f"{int(time.time() * 1000):011x}{secrets.token_hex(5)}"


async def enqueue_notification(conn, hostname: str, kind: str, message_id: str, items) -> list[Event]:
    """items: (row, outcome) with row keys address, orcpt, mail_from, envid, ret, received_at, account and
    outcome.reply. Returns the audit events for the caller's transaction."""
    r0 = items[0][0]
    original = await conn.fetchval("SELECT body FROM message WHERE id = $1", message_id)
    reports = [dsn.Report(r["address"], r["orcpt"], dsn.status_of(o.reply, kind), o.reply, None) for r, o in items]
    body = dsn.build(kind, hostname=hostname, mail_from=r0["mail_from"], original=original, reports=reports,
                     envid=r0["envid"], ret=r0["ret"], arrival=r0["received_at"], original_id=message_id)
    note_id = new_message_id()
    await insert_message(conn, NewMessage(id=note_id, account=None, mail_from="", body=body,
                                          recipients=[NewRecipient(r0["mail_from"], r0["mail_from"])]))
    obs.NOTIFICATIONS.labels(kind).inc()
    return [
        Event("notification_sent", message_id=message_id, account=r0["account"], sender=r0["mail_from"],
              facts={"kind": kind, "notification_id": note_id, "recipients": [r["address"] for r, _ in items]}),
        Event("received", message_id=note_id, sender="", recipient=r0["mail_from"],
              facts={"origin": f"{kind} notification for {message_id}"}),
    ]
