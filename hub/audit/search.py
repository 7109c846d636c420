"""Audit queries: messages matching filters (one row per message, newest first, keyset-paginated), a message's
timeline, and the `audit_searched` event that every query leaves behind.

How a search runs: the most selective key among the filters (patient, recipient, sender, account, document type,
rule version; else "every message") drives an index-only range scan of `audit_message_key` on
(kind, value, received_at, message_id) within the period, in page order from the cursor; the other keys are
checked by exact index probes; status is checked last (message state from the relay's `message` table, or the last
delivery outcome per recipient from the events). A summary is then built for the page's rows only.

`sender=<>` finds messages with the null sender (notifications). Status values: processing, queued, held, done, dead (the message's state), delivered, deferred, bounced (some
recipient's last delivery outcome).
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import io
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Mapping

import asyncpg

from hub.audit.patient import patient_key
from hub.audit.store import EVENT_COLUMNS, Event, record
from hub.errors import InputError

STATES = ("processing", "queued", "held", "done", "dead")
OUTCOMES = ("delivered", "deferred", "bounced")
MAX_LIMIT = 10000


@dataclass(frozen=True)
class Filters:
    since: dt.datetime | None = None
    until: dt.datetime | None = None          # exclusive
    message_id: str | None = None
    account: str | None = None
    sender: str | None = None
    recipient: str | None = None
    patient_key: bytes | None = None
    doc_type: str | None = None
    status: str | None = None
    rule_version: int | None = None

    def facts(self) -> dict[str, Any]:
        """The filters as recorded in `audit_searched` (the patient as its keyed hash, never the INS)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bytes):
                value = value.hex()
            elif isinstance(value, dt.datetime):
                value = value.isoformat()
            out[f.name] = value
        return out


def parse_time(value: str, *, end: bool = False) -> dt.datetime:
    """ISO date or date-time; naive values are UTC; a bare date as an end bound means the end of that day."""
    try:
        if len(value) == 10:
            day = dt.date.fromisoformat(value)
            t = dt.datetime.combine(day + dt.timedelta(days=1) if end else day, dt.time(), dt.timezone.utc)
        else:
            t = dt.datetime.fromisoformat(value)
    except ValueError:
        raise InputError(f"not a date or date-time: {value!r}") from None
    except OverflowError:                 # the end of 9999-12-31 is past the last day Python knows
        raise InputError(f"date out of range: {value!r}") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.timezone.utc)


def parse_filters(params: Mapping[str, str | None], key: bytes | None) -> Filters:
    """Filters from CLI options or query parameters (names as in Filters, plus `patient_ins`; `patient_key` in
    hex is accepted too). InputError on a bad value."""
    def get(name: str) -> str | None:
        v = params.get(name)
        return v.strip() if isinstance(v, str) and v.strip() else None

    pkey = None
    if get("patient_ins"):
        if key is None:
            raise InputError("patient search needs the audit patient key")
        pkey = patient_key(get("patient_ins"), key)
    elif get("patient_key"):
        try:
            pkey = bytes.fromhex(get("patient_key"))
        except ValueError:
            raise InputError("patient_key: expected hex") from None
    status = get("status")
    if status is not None and status not in STATES + OUTCOMES:
        raise InputError(f"status: expected one of {', '.join(STATES + OUTCOMES)}")
    version = get("rule_version")
    if version is not None and not version.isdigit():
        raise InputError("rule_version: expected a number")
    return Filters(
        since=parse_time(get("since")) if get("since") else None,
        until=parse_time(get("until"), end=True) if get("until") else None,
        message_id=get("message_id") or get("message"), account=get("account"), sender=get("sender"),
        recipient=get("recipient"), patient_key=pkey, doc_type=get("doc_type"), status=status,
        rule_version=int(version) if version is not None else None)


def encode_cursor(received_at: dt.datetime, message_id: str) -> str:
    raw = json.dumps([received_at.isoformat(), message_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[dt.datetime, str]:
    try:
        at, mid = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return dt.datetime.fromisoformat(at), str(mid)
    except (ValueError, TypeError):
        raise InputError("cursor: not one this server gave") from None


@dataclass
class MessageSummary:
    message_id: str
    received_at: dt.datetime
    account: str | None = None
    sender: str | None = None
    recipients: list[str] = field(default_factory=list)
    doc_types: list[str] = field(default_factory=list)
    rule_versions: list[int] = field(default_factory=list)
    state: str | None = None
    outcomes: dict[str, str] = field(default_factory=dict)   # recipient -> last delivery outcome
    events: int = 0

    @property
    def status(self) -> str:
        counts: dict[str, int] = {}
        for o in self.outcomes.values():
            counts[o] = counts.get(o, 0) + 1
        detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        return f"{self.state or '-'}" + (f" ({detail})" if detail else "")

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["received_at"] = self.received_at.isoformat()
        d["status"] = self.status
        return d


@dataclass
class Page:
    messages: list[MessageSummary]
    next_cursor: str | None


def _plan(f: Filters, scope: str | None, cursor: str | None, limit: int, order: str) -> tuple[str, list]:
    args: list[Any] = []

    def arg(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    keys: list[tuple[str, str]] = []
    if f.patient_key is not None:
        keys.append(("p", f.patient_key.hex()))
    if f.recipient:
        keys.append(("r", f.recipient.lower()))
    if f.sender:
        keys.append(("s", "" if f.sender == "<>" else f.sender.lower()))     # <> : the null sender
    for account in {a for a in (f.account, scope) if a}:
        keys.append(("a", account))
    if f.doc_type:
        keys.append(("d", f.doc_type))
    if f.rule_version is not None:
        keys.append(("v", str(f.rule_version)))
    if not keys:
        keys.append(("*", ""))
    (kind, value), others = keys[0], keys[1:]
    where = [f"k.kind = {arg(kind)}::text::\"char\"", f"k.value = {arg(value)}"]
    if f.since:
        where.append(f"k.received_at >= {arg(f.since)}")
    if f.until:
        where.append(f"k.received_at < {arg(f.until)}")
    if f.message_id:
        m = arg(f.message_id)
        where.append(f"k.message_id = {m}")
        where.append(f"k.received_at = (SELECT e.at FROM audit_event e WHERE e.message_id = {m}"
                     " AND e.event = 'received' ORDER BY e.id LIMIT 1)")
    desc = order != "asc"
    if cursor:
        at, mid = decode_cursor(cursor)
        where.append(f"(k.received_at, k.message_id) {'<' if desc else '>'} ({arg(at)}, {arg(mid)})")
    for okind, ovalue in others:
        where.append(f"EXISTS (SELECT 1 FROM audit_message_key x WHERE x.kind = {arg(okind)}::text::\"char\""
                     f" AND x.value = {arg(ovalue)} AND x.received_at = k.received_at"
                     " AND x.message_id = k.message_id)")
    if f.status in STATES:
        where.append(f"EXISTS (SELECT 1 FROM message m WHERE m.id = k.message_id AND m.state = {arg(f.status)})")
    elif f.status in OUTCOMES:
        where.append("EXISTS (SELECT 1 FROM (SELECT DISTINCT ON (lower(e.recipient)) e.event FROM audit_event e"
                     " WHERE e.message_id = k.message_id AND e.at >= k.received_at"
                     " AND e.event IN ('delivered', 'deferred', 'bounced') AND e.recipient IS NOT NULL"
                     f" ORDER BY lower(e.recipient), e.id DESC) o WHERE o.event = {arg(f.status)})")
    direction = "DESC" if desc else "ASC"
    sql = (f"SELECT k.received_at, k.message_id FROM audit_message_key k WHERE {' AND '.join(where)}"
           f" ORDER BY k.received_at {direction}, k.message_id {direction} LIMIT {arg(limit + 1)}")
    return sql, args


_SUMMARIES = """
SELECT r.message_id, r.received_at, m.state, ev.account, ev.sender, ev.doc_types, ev.rule_versions, ev.recipients,
       ev.listed::text AS listed, ev.events, oc.outcomes::text AS outcomes
FROM unnest($1::text[], $2::timestamptz[]) WITH ORDINALITY AS r(message_id, received_at, ord)
LEFT JOIN message m ON m.id = r.message_id
CROSS JOIN LATERAL (
    SELECT (array_agg(e.account ORDER BY e.id) FILTER (WHERE e.account IS NOT NULL))[1] AS account,
           (array_agg(e.sender ORDER BY e.id) FILTER (WHERE e.sender IS NOT NULL))[1] AS sender,
           array_agg(DISTINCT e.doc_type) FILTER (WHERE e.doc_type IS NOT NULL) AS doc_types,
           array_agg(DISTINCT e.rule_version) FILTER (WHERE e.rule_version IS NOT NULL) AS rule_versions,
           array_agg(DISTINCT lower(e.recipient)) FILTER (WHERE e.recipient IS NOT NULL) AS recipients,
           jsonb_agg(e.facts -> 'recipients') FILTER (WHERE e.event = 'received') AS listed,
           count(*) AS events
    FROM audit_event e WHERE e.message_id = r.message_id AND e.at >= r.received_at) ev
CROSS JOIN LATERAL (
    SELECT jsonb_object_agg(o.recipient, o.event) AS outcomes
    FROM (SELECT DISTINCT ON (lower(e.recipient)) lower(e.recipient) AS recipient, e.event
          FROM audit_event e
          WHERE e.message_id = r.message_id AND e.at >= r.received_at AND e.recipient IS NOT NULL
            AND e.event IN ('delivered', 'deferred', 'bounced')
          ORDER BY lower(e.recipient), e.id DESC) o) oc
ORDER BY r.ord
"""


async def summaries(conn: asyncpg.Connection, rows: list[tuple[str, dt.datetime]]) -> list[MessageSummary]:
    out = []
    for r in await conn.fetch(_SUMMARIES, [m for m, _ in rows], [at for _, at in rows]):
        recipients: list[str] = []
        for listed in json.loads(r["listed"] or "[]"):
            for addr in listed if isinstance(listed, list) else []:
                if isinstance(addr, str) and addr.lower() not in recipients:
                    recipients.append(addr.lower())
        recipients += [a for a in r["recipients"] or [] if a not in recipients]
        out.append(MessageSummary(
            message_id=r["message_id"], received_at=r["received_at"], account=r["account"], sender=r["sender"],
            recipients=recipients, doc_types=sorted(r["doc_types"] or []),
            rule_versions=sorted(r["rule_versions"] or []), state=r["state"],
            outcomes=json.loads(r["outcomes"] or "{}"), events=r["events"]))
    return out


async def search(conn: asyncpg.Connection, f: Filters, *, scope: str | None = None, cursor: str | None = None,
                 limit: int = 50, order: str = "desc") -> Page:
    """One page of messages matching `f`, restricted to account `scope` if given."""
    if not 1 <= limit <= MAX_LIMIT:
        raise InputError(f"limit: expected 1 to {MAX_LIMIT}")
    if order not in ("asc", "desc"):
        raise InputError("order: expected asc or desc")
    if scope and f.account and f.account != scope:
        return Page([], None)
    sql, args = _plan(f, scope, cursor, limit, order)
    rows = [(r["message_id"], r["received_at"]) for r in await conn.fetch(sql, *args)]
    more = len(rows) > limit
    rows = rows[:limit]
    nxt = encode_cursor(rows[-1][1], rows[-1][0]) if more else None
    return Page(await summaries(conn, rows), nxt)


async def message_timeline(conn: asyncpg.Connection, message_id: str, *, scope: str | None = None
                           ) -> tuple[MessageSummary, list[dict[str, Any]]] | None:
    """The summary and every event of one message; None if unknown or outside `scope`."""
    cols = ", ".join(c if c != "facts" else "facts::text AS facts" for c in EVENT_COLUMNS)
    events = await conn.fetch(f"SELECT {cols} FROM audit_event WHERE message_id = $1 ORDER BY id", message_id)
    if not events:
        return None
    received = next((e["at"] for e in events if e["event"] == "received"), events[0]["at"])
    summary = (await summaries(conn, [(message_id, received)]))[0]
    if scope is not None and summary.account != scope:
        return None
    out = []
    for e in events:
        d = dict(e)
        d["facts"] = json.loads(d["facts"])
        d["patient_key"] = e["patient_key"].hex() if e["patient_key"] is not None else None
        out.append(d)
    return summary, out


async def log_query(conn: asyncpg.Connection, *, actor: str, via: str, filters: dict[str, Any],
                    results: int) -> None:
    """Record that someone queried the audit trail (who, how, which filters, how many results)."""
    await record(conn, Event("audit_searched", actor=actor,
                             facts={"via": via, "filters": filters, "results": results}))


CSV_COLUMNS = ("received_at", "message_id", "account", "sender", "recipients", "doc_types", "rule_versions",
               "status", "events")


def _cell(value: Any) -> str:
    text = " ".join(map(str, value)) if isinstance(value, list) else "" if value is None else str(value)
    # a cell starting with one of these is a formula to a spreadsheet (CSV injection)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def to_csv(messages: list[MessageSummary]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow(CSV_COLUMNS)
    for m in messages:
        d = m.as_dict()
        w.writerow([_cell(d[c]) for c in CSV_COLUMNS])
    return buf.getvalue()


def to_json(page: Page) -> dict[str, Any]:
    return {"messages": [m.as_dict() for m in page.messages], "next_cursor": page.next_cursor}


def event_json(e: dict[str, Any]) -> dict[str, Any]:
    return {**e, "at": e["at"].isoformat()}
