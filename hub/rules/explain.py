"""Explaining and replaying routing decisions, for operators: nothing here sends, stores or changes anything.

`explain_message` shows, for one message file, the detected content, each recipient's directory resolution, the
matching rule, why every earlier rule did not match, the transforms and the resulting envelope.

`replay` re-evaluates a candidate rule set against the `routed` audit events of recent messages and counts the
decisions that would change. It can only use what those events recorded (see FACTS_KEYS).

Collaborators are injected: `detector(message bytes) -> (content, doc_code)` (hub.transform.detect) and
`resolver(address) -> awaitable (recipient_kind, resolved address)` (the directory).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email import policy
from email.parser import BytesParser
from email.utils import getaddresses, parseaddr
from typing import Awaitable, Callable, Collection

import asyncpg

from hub.rules import store
from hub.rules.engine import Decision, Facts, RuleSet
from hub.rules.loader import RulesInvalid, compile_files

Detector = Callable[[bytes], tuple[str | None, str | None]]
Resolver = Callable[[str], Awaitable[tuple[str | None, str | None]]]

# Keys the 'routed' audit event's facts must hold for replay (besides the account, sender and recipient columns).
FACTS_KEYS = ("rule_id", "rcpt", "mail_from", "recipient_kind", "content", "doc_code", "size", "headers")


def routing(decision: Decision, rcpt: str, *, resolved: str | None = None,
            recipient_kind: str | None = None) -> tuple[str, list[str]]:
    """(verdict, addresses the message would be sent to) for one recipient under `decision`."""
    a = decision.actions
    if a.reject is not None:
        when = "at RCPT time" if decision.stage == "rcpt" else "after DATA (or by notification)"
        return f"rejected {when}: {a.reject.reply}", []
    targets: list[str]
    if a.redirect:
        verdict, targets = "redirected", [a.redirect]
    elif recipient_kind == "unresolved":
        fb = a.fallback
        if fb is None:
            verdict, targets = "unresolved: setting directory.unresolved applies (no fallback in the rule)", []
        elif fb.kind == "reject":
            return "rejected: 550 5.1.1 recipient not found in the directory (fallback: reject)", []
        elif fb.kind == "mailbox":
            verdict, targets = "unresolved, sent to the fallback mailbox", [fb.address or "<account fallback mailbox>"]
        else:
            verdict, targets = "unresolved, sent to the paper service", ["<paper service>"]
    else:
        verdict, targets = "delivered", [resolved or rcpt]
    targets += [c for c in a.copy_to if c not in targets]
    if a.hold:
        verdict = f"held for manual release ({a.hold}); then {verdict}"
    return verdict, targets


def _headers(message: bytes) -> tuple[dict[str, str], object]:
    msg = BytesParser(policy=policy.compat32).parsebytes(message)
    headers: dict[str, str] = {}
    for name, value in msg.items():
        headers.setdefault(name.lower(), re.sub(r"\r?\n[ \t]+", " ", str(value)).strip())
    return headers, msg


async def explain_message(rs: RuleSet, message: bytes, *, account: str | None, mail_from: str | None = None,
                          rcpts: Collection[str] = (), now: datetime | None = None, detector: Detector | None = None,
                          resolver: Resolver | None = None, recipient_kind: str | None = None) -> list[str]:
    """Lines of text explaining how `rs` would route `message` for each recipient."""
    headers, msg = _headers(message)
    content, doc_code = detector(message) if detector else (None, None)
    mail_from = mail_from if mail_from is not None else parseaddr(headers.get("from", ""))[1]
    if not rcpts:
        rcpts = [a for _, a in getaddresses(msg.get_all("to", []) + msg.get_all("cc", [])) if a]
    now = now or datetime.now(timezone.utc)
    where = f"version {rs.version}" if rs.version else "candidate files (not activated)"
    out = [f"rule set: {where}, {len(rs.rules)} rules, hash {rs.content_hash[:12]}",
           f"message: {len(message)} bytes; content: {content or 'unknown'}; doc_code: {doc_code or '-'}",
           f"envelope: account {account or '-'}, MAIL FROM:<{mail_from}>"]
    if not rcpts:
        out.append("no recipients: give --rcpt ADDRESS (none found in To/Cc)")
    for rcpt in rcpts:
        kind, resolved, how = recipient_kind, None, "given on the command line" if recipient_kind else None
        if resolver is not None and kind is None:
            kind, resolved = await resolver(rcpt)
            how = "directory"
        facts = Facts(account, mail_from, rcpt, kind, content, doc_code, headers, len(message), now)
        d = rs.evaluate(facts, explain=True)
        rule = rs.rule(d.rule_id)
        out.append(f"recipient {rcpt}:")
        out.append(f"  resolution: {kind} ({how})" + (f" -> {resolved}" if resolved else "")
                   if kind else "  resolution: not resolved (no directory)")
        out.append(f"  rule: {d.rule_id} ({rule.where if rule else '?'}), decidable at {d.stage.upper()} time"
                   + (f": {rule.description}" if rule and rule.description else ""))
        if d.explain:
            out.append("  earlier rules not matched:")
            out.extend(f"    - {line}" for line in d.explain)
        out.append(f"  actions: {d.actions.summary()}")
        if d.actions.transform:
            params = d.actions.transform.params
            out.append(f"  transform: {d.actions.transform.chain}" + (f" {dict(params)}" if params else ""))
        if d.actions.headers:
            h = d.actions.headers
            out.extend([f"  header remove: {n}" for n in h.remove] + [f"  header set: {n}: {v}" for n, v in h.set]
                       + [f"  header add: {n}: {v}" for n, v in h.add])
        verdict, targets = routing(d, rcpt, resolved=resolved, recipient_kind=kind)
        out.append(f"  outcome: {verdict}")
        if targets:
            out.append(f"  final envelope: MAIL FROM:<{mail_from}> RCPT TO:" + ", ".join(f"<{t}>" for t in targets))
    return out


def temporary_detect(message: bytes) -> tuple[str | None, str | None]:
    """TEMPORARY stand-in for hub.transform.detect (used only while that module does not exist): a rough look at
    the message text. Not used by the running hub."""
    msg = BytesParser(policy=policy.compat32).parsebytes(message)
    for part in msg.walk():
        if part.is_multipart():
            continue
        data = part.get_payload(decode=True) or b""
        head = data[:4096].lstrip()
        if head.startswith(b"%PDF"):
            return "pdf", None
        if head.startswith(b"PK\x03\x04"):
            return ("xdm", None) if b"IHE_XDM" in data else ("other", None)
        if head.startswith(b"MSH|"):
            kind = re.search(rb"^MSH\|[^\r\n]*?\|(ORU|MDM)\^", head)
            return ({b"ORU": "hl7_oru", b"MDM": "hl7_mdm"}.get(kind.group(1)) if kind else "other"), None
        if head.startswith(b"H|"):
            return "hprim_sante", None
        if b"****LAB****" in head or b"****FINLAB****" in data:
            return "hprim_net", None
        if b"ClinicalDocument" in head:
            code = re.search(rb"<code\b[^>]*\bcode=\"([^\"]+)\"", data)
            return "cda", code.group(1).decode("ascii", "replace") if code else None
    return "other", None


# --- replay ------------------------------------------------------------------------------------------------------

@dataclass
class ReplayReport:
    since: datetime
    total: int = 0
    unchanged: int = 0
    changes: Counter = field(default_factory=Counter)         # (old rule, new rule, note) -> count
    examples: dict = field(default_factory=lambda: defaultdict(list))  # same key -> a few message ids
    uncertain: int = 0                                         # header facts the candidate needs were not recorded

    def lines(self) -> list[str]:
        changed = sum(self.changes.values())
        out = [f"replayed {self.total} routing decisions since {self.since:%Y-%m-%d %H:%M %Z}: "
               f"{self.unchanged} unchanged, {changed} would change"]
        for (old, new, note), count in self.changes.most_common():
            label = f"{old} -> {new}" if old != new else f"{old}: {note}"
            out.append(f"  {count:6d}  {label}   e.g. {', '.join(self.examples[(old, new, note)])}")
        if self.uncertain:
            out.append(f"  {self.uncertain} decisions lacked a header the candidate rules test (not recorded at the "
                       "time): their result may differ in reality")
        return out


def parse_since(text: str) -> timedelta:
    m = re.fullmatch(r"\s*(\d+)\s*([wdhm]?)\s*", text)
    if not m:
        raise ValueError(f"--since: expected e.g. 7d, 12h, 30m, 2w; got {text!r}")
    n, unit = int(m.group(1)), m.group(2) or "d"
    return {"w": timedelta(weeks=n), "d": timedelta(days=n), "h": timedelta(hours=n), "m": timedelta(minutes=n)}[unit]


def facts_from_event(row) -> Facts:
    """Facts as recorded by a 'routed' audit event (columns of audit_event, plus m_* columns of message)."""
    r = dict(row)
    f = r.get("facts") or {}
    headers = {k.lower(): v for k, v in (f.get("headers") or {}).items() if v is not None}
    sender = r.get("sender") if r.get("sender") is not None else r.get("m_mail_from")
    return Facts(account=r.get("account") or r.get("m_account"),
                 mail_from=f.get("mail_from", sender or ""),
                 rcpt=f.get("rcpt") or r.get("recipient") or "",
                 recipient_kind=f.get("recipient_kind"), content=f.get("content"), doc_code=f.get("doc_code"),
                 headers=headers, size=f.get("size", r.get("m_size")), now=r["at"])


_REPLAY_SQL = """
SELECT a.id, a.at, a.message_id, a.account, a.sender, a.recipient, a.rule_version, a.facts,
       m.account AS m_account, m.mail_from AS m_mail_from, m.size AS m_size
FROM audit_event a LEFT JOIN message m ON m.id = a.message_id
WHERE a.event = 'routed' AND a.at >= $1
ORDER BY a.id
"""


async def replay(conn: asyncpg.Connection, candidate: RuleSet, *, since: timedelta,
                 transforms: Collection[str], now: datetime | None = None) -> ReplayReport:
    """Re-evaluate `candidate` on the routed events of the last `since`; compare with what was decided then."""
    start = (now or datetime.now(timezone.utc)) - since
    report = ReplayReport(since=start)
    old_sets: dict[int, RuleSet | None] = {}
    async with conn.transaction(readonly=True):
        async for row in conn.cursor(_REPLAY_SQL, start):
            facts_json = row["facts"] or {}
            old_rule = facts_json.get("rule_id")
            if old_rule is None:
                continue
            facts = facts_from_event(row)
            report.total += 1
            recorded = facts_json.get("headers") or {}
            if any(name not in {k.lower() for k in recorded} for name in candidate.header_names):
                report.uncertain += 1
            new = candidate.evaluate(facts)
            note = ""
            if new.rule_id == old_rule:
                old_set = await _old_set(conn, row["rule_version"], old_sets, transforms)
                old = old_set.rule(old_rule) if old_set else None
                if old is None or old.actions == new.actions:
                    report.unchanged += 1
                    continue
                note = f"same rule, actions changed ({old.actions.summary()} -> {new.actions.summary()})"
            key = (old_rule, new.rule_id, note)
            report.changes[key] += 1
            if len(report.examples[key]) < 3:
                report.examples[key].append(row["message_id"] or f"event {row['id']}")
    return report


async def _old_set(conn, version, cache, transforms) -> RuleSet | None:
    if version is None:
        return None
    if version not in cache:
        stored = await store.get(conn, version)
        try:
            cache[version] = compile_files(stored.files, transforms) if stored else None
        except RulesInvalid:
            cache[version] = None
    return cache[version]
