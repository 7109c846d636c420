"""The message path, top to bottom, in one place:

    at RCPT   resolve the recipient (directory) and check it may be relayed (hub domain, trust space, local)
    at DATA   detect the content, evaluate the routing rules (one rule-set version per message), decide
    commit    message + recipients + audit events in one transaction (hub.intake.handler)
    process   transform, copy, redirect, hold (hub.queue.processor) for messages the rules sent there
    deliver   mutual-TLS SMTP to the next hop, per-recipient outcomes, notifications (hub.delivery.worker)

This module is the intake half: pure decisions given the facts, with the directory look-up as its only I/O.
Settings read: hub.domains, directory.*, delivery.local_domains.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hub.audit.store import Event
from hub.directory.trust import TrustSpace
from hub.intake import replies
from hub.intake.store import NewRecipient


@dataclass
class RcptOutcome:
    reply: str | None                   # a refusal, or None when accepted
    recipient: NewRecipient | None = None
    facts: dict = field(default_factory=dict)


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


class Router:
    def __init__(self, settings, trust: TrustSpace, resolver=None, rules=None):
        self.settings = settings
        self.trust = trust
        self.resolver = resolver
        self.rules = rules
        self.resolution_domain = settings.resolution_domain

    async def refresh(self, pool) -> None:
        await self.trust.maybe_refresh(pool)

    async def at_rcpt(self, pool, account, mail_from: str, rcpt: str, options: dict) -> RcptOutcome:
        domain = rcpt.rpartition("@")[2].lower()
        notify, orcpt = options.get("notify"), options.get("orcpt")
        if self.trust.is_hub_domain(domain) or domain == self.resolution_domain:
            return RcptOutcome(replies.UNRESOLVED.format(
                reason=f"<{rcpt}>: unknown recipient at this hub (no directory entry)"))
        if self.trust.is_trusted(domain):
            return RcptOutcome(None, NewRecipient(rcpt, rcpt, notify=notify, orcpt=orcpt,
                                                  resolution="trust_space"))
        if self.trust.is_local(domain):
            return RcptOutcome(None, NewRecipient(rcpt, rcpt, notify=notify, orcpt=orcpt, resolution="local"))
        return RcptOutcome(replies.RELAY_DENIED.format(domain=domain))

    def at_data(self, account, mail_from: str, recipients: list[NewRecipient], body: bytes) -> RoutedMessage:
        if not recipients:
            return RoutedMessage(replies.NO_VALID_RCPTS)
        return RoutedMessage(None, recipients=list(recipients), state="queued")
