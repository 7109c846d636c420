"""The message path, top to bottom, in one place:

    at RCPT   resolve the recipient in the directory; check it may be relayed (trust space, local destination);
              the routing rules decide already when the envelope alone decides (reject, fallback)
    at DATA   detect the content if the rules look at it, evaluate the rules for each recipient under ONE rule-set
              version (taken at MAIL time), plan: deliver | redirect | copy | hold | reject | transform/headers
    commit    message + recipients + `received` and `routed` audit events in one transaction (hub.intake.handler)
    process   transforms, header edits, post-DATA rejections, held recipients (hub.queue.processor)
    deliver   mutual-TLS SMTP to the next hop, per-recipient outcomes, notifications (hub.delivery.worker)

This module is the intake half: decisions given the facts, with the directory look-up as its only I/O.
Settings read: hub.domains, directory.unresolved, delivery.local_domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from email.parser import BytesHeaderParser
from email.policy import compat32

from hub.audit.store import Event
from hub.directory.trust import TrustSpace
from hub.intake import replies
from hub.intake.store import NewRecipient

UNPARSABLE = "unparsable"               # the `content` of a message whose structure cannot be read (rules: content)


@dataclass
class RcptOutcome:
    reply: str | None                   # a refusal, or None when accepted
    recipient: NewRecipient | None = None


@dataclass
class RoutedMessage:
    reply: str | None
    recipients: list[NewRecipient] = field(default_factory=list)
    state: str = "queued"
    rule_version: int | None = None
    routed: list[Event] = field(default_factory=list)

    def events(self, message_id: str, account: str | None, sender: str) -> list[Event]:
        return [Event(e.event, message_id=message_id, account=account, sender=sender, recipient=e.recipient,
                      facts=e.facts, rule_version=e.rule_version, doc_type=e.doc_type) for e in self.routed]


@dataclass(frozen=True)
class _Local:
    """Resolution of an address on a destination the configuration declares outside the trust space."""
    address: str
    method: str = "local"
    kind: str = "unknown"
    paper: bool = False
    flagged: bool = False
    reason: str = "configured local destination"
    national_id: str | None = None


class Router:
    def __init__(self, settings, trust: TrustSpace, resolver=None, rules=None, detector=None):
        self.settings = settings
        self.trust = trust
        self.resolver = resolver
        self.rules = rules                       # hub.rules.RulesService or None
        self.detector = detector                 # bytes -> (content, doc_code)

    async def refresh(self, pool) -> None:
        await self.trust.maybe_refresh(pool)

    def ruleset(self):
        return self.rules.current if self.rules is not None else None

    def deliverable(self, address: str) -> bool:
        """What the delivery stage will deliver (TrustSpace.delivers_to): a domain with a `delivery.transport` route
        only was answered 250 here and then bounced by delivery ("no longer in the MSSanté trust space")."""
        return self.trust.delivers_to(address.rpartition("@")[2])

    async def resolve(self, pool, rcpt: str):
        domain = rcpt.rpartition("@")[2].lower()
        if self.trust.is_local(domain) and not self.trust.is_hub_domain(domain):
            return _Local(rcpt.lower())
        if self.resolver is None:
            if self.trust.is_trusted(domain):
                return _Local(rcpt.lower(), method="trust_space_unlisted", flagged=True,
                              reason="authorised MSSanté domain (no directory loaded)")
            return None
        async with pool.acquire() as conn:
            return await self.resolver.resolve(conn, rcpt)

    async def at_rcpt(self, pool, account, mail_from: str, rcpt: str, options: dict, ruleset=None) -> RcptOutcome:
        from hub.rules.engine import Facts, recipient_kind_of

        domain = rcpt.rpartition("@")[2].lower()
        if not (self.trust.delivers_to(domain) or self.trust.is_hub_domain(domain)
                or domain == self.settings.resolution_domain):
            return RcptOutcome(replies.RELAY_DENIED.format(domain=domain))      # never an open relay
        res = await self.resolve(pool, rcpt)
        if res is None:
            if self.trust.is_hub_domain(domain):
                return RcptOutcome(replies.UNRESOLVED.format(reason=f"<{rcpt}>: unknown recipient at this hub"))
            return RcptOutcome(replies.RELAY_DENIED.format(domain=domain))
        kind = recipient_kind_of(res) if res.method != "local" else None
        decision = None
        if ruleset is not None:
            decision = ruleset.evaluate_rcpt(Facts(account=account.name if account else None, mail_from=mail_from,
                                                   rcpt=rcpt, recipient_kind=kind))
            if decision is not None and decision.actions.reject is not None:
                return RcptOutcome(decision.actions.reject.reply)
        address, method = res.address, res.method
        if address is None:
            fb = decision.actions.fallback if decision is not None else None
            fb_kind = fb.kind if fb else ("mailbox" if self.settings.directory.unresolved == "fallback" else "reject")
            if fb_kind == "reject":
                return RcptOutcome(replies.UNRESOLVED.format(reason=res.reason))
            address = (fb.address if fb and fb.address else None) or (account.fallback_mailbox if account else None)
            if not address:
                return RcptOutcome(replies.UNRESOLVED.format(
                    reason=f"{res.reason} (and no fallback mailbox is configured for this sender)"))
            method = f"fallback_{fb_kind}"
        if not self.deliverable(address):
            if method == "hub_local":
                return RcptOutcome(replies.UNRESOLVED.format(reason=f"<{rcpt}>: no such mailbox at this hub"))
            return RcptOutcome(replies.RELAY_DENIED.format(domain=address.rpartition("@")[2]))
        recipient = NewRecipient(rcpt, address, notify=options.get("notify"), orcpt=options.get("orcpt"),
                                 resolution=method)
        recipient.facts = {"method": method, "kind": kind, "flagged": res.flagged, "reason": res.reason,
                           "paper": res.paper}
        return RcptOutcome(None, recipient)

    def at_data(self, account, mail_from: str, recipients: list[NewRecipient], body: bytes,
                ruleset=None) -> RoutedMessage:
        from hub.rules.engine import Facts, data_reply

        if not recipients:
            return RoutedMessage(replies.NO_VALID_RCPTS)
        account_name = account.name if account else None
        if ruleset is None:
            events = [Event("routed", recipient=r.address, facts={"rcpt": r.rcpt, **getattr(r, "facts", {})})
                      for r in recipients]
            return RoutedMessage(None, recipients=list(recipients), state="queued", routed=events)
        # Reading the content is a pure function of its bytes: what fails now fails at every retry, so it is never a
        # 4xx. The rules decide (`content: unparsable`): relay as is, hold, or refuse.
        content = doc_code = unparsable = None
        headers: dict[str, str] = {}
        if ruleset.needs_content and self.detector is not None:
            try:
                content, doc_code = self.detector(body)
            except MemoryError:
                raise
            except Exception as exc:
                content, unparsable = UNPARSABLE, f"{type(exc).__name__}: {exc}"[:300]
        if ruleset.header_names:         # compat32 never raises: it records defects
            head = BytesHeaderParser(policy=compat32).parsebytes(body.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\n")
            for name in ruleset.header_names:
                value = head.get(name)
                if value is not None:
                    headers[name] = str(value)
        decisions = []
        for r in recipients:
            facts = getattr(r, "facts", {})
            decisions.append(ruleset.evaluate(Facts(
                account=account_name, mail_from=mail_from, rcpt=r.rcpt, recipient_kind=facts.get("kind"),
                content=content, doc_code=doc_code, headers=headers, size=len(body))))
        everyone = data_reply(decisions)
        if everyone is not None:
            return RoutedMessage(everyone.reply)
        out: list[NewRecipient] = []
        events: list[Event] = []
        for r, d in zip(recipients, decisions):
            a = d.actions
            r.rule_id = d.rule_id
            if a.priority is not None:
                r.priority = a.priority
            if a.disposition == "redirect" and a.redirect:
                r.address = a.redirect
            plan: dict = {}
            if a.reject is not None:
                plan["reject"] = a.reject.reply
            elif a.disposition == "hold":
                r.state = "held"
                plan["hold"] = a.hold or "held by rule"
            if a.transform is not None and "reject" not in plan:
                plan["transform"] = {"chain": a.transform.chain, "params": dict(a.transform.params)}
            if a.headers is not None and "reject" not in plan:
                plan["headers"] = {"add": list(a.headers.add), "set": list(a.headers.set),
                                   "remove": list(a.headers.remove)}
            if a.on_invalid:
                plan["on_invalid"] = a.on_invalid
            if plan:
                if r.state == "held":
                    plan.pop("hold")                 # the reason is in the routed event; what stays is the work
                r.plan = plan or None
                if r.state != "held":
                    r.state = "pending"
            facts = {"rule_id": d.rule_id, "rcpt": r.rcpt, "mail_from": mail_from,
                     "recipient_kind": getattr(r, "facts", {}).get("kind"), "content": content,
                     "doc_code": doc_code, "size": len(body),
                     "headers": {n: headers.get(n) for n in ruleset.header_names},
                     "resolution": getattr(r, "facts", {}), "actions": a.summary()}
            if unparsable:
                facts["unparsable"] = unparsable
            events.append(Event("routed", recipient=r.address, rule_version=d.version, doc_type=doc_code,
                                facts=facts))
            out.append(r)
            for extra in a.copy_to:
                copy = NewRecipient(extra, extra, state=r.state, plan=r.plan, rule_id=d.rule_id,
                                    resolution=f"copy:{d.rule_id}", priority=r.priority)
                out.append(copy)
                events.append(Event("routed", recipient=extra, rule_version=d.version, doc_type=doc_code,
                                    facts={**facts, "rcpt": extra, "copy_of": r.address}))
        states = {r.state for r in out}
        state = "processing" if "pending" in states else ("held" if states == {"held"} else "queued")
        return RoutedMessage(None, recipients=out, state=state, rule_version=ruleset.version, routed=events)


def apply_header_edits(body: bytes, edits: dict) -> bytes:
    """Remove, then set (replace), then add header fields, on the raw header block; the body is not touched."""
    head, sep, rest = body.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    drop = {n.lower() for n in edits.get("remove", [])} | {n.lower() for n, _ in edits.get("set", [])}

    def name_of(f: list[bytes]) -> str:
        return f[0].split(b":", 1)[0].strip().decode("ascii", "replace").lower()

    kept = [f for f in fields if name_of(f) not in drop]
    for name, value in list(edits.get("set", [])) + list(edits.get("add", [])):
        kept.append([f"{name}: {value}".encode("utf-8")])
    return b"\r\n".join(b"\r\n".join(f) for f in kept) + (sep or b"\r\n\r\n") + rest
