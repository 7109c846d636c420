"""Recipient resolution: which mailbox a RCPT TO address stands for, and how we know.

Order (first that applies wins):
  1. "directory"            the address is a published mailbox (current generation of the MSSanté extraction);
  2. "national_id"          `<IDNPS or RPPS>@<resolution domain>` -> the practitioner's published mailbox; among
                            several: the operator's preferred mailbox, then PER before CAB, ORG, APP, then one at
                            the structure the sender names (FINESS / idNatSt / SIRET), then alphabetical;
  3. "hub_local"            another address on one of the hub's own domains (postmaster, local services);
  4. "trust_space_unlisted" an address on an authorised trust-space domain but absent from the directory (red
                            list, very new mailbox): allowed and `flagged`;
  5. "unresolved"           anything else (address None); the caller applies directory.unresolved (550 5.1.1 with
                            `reason`, or the account's fallback mailbox).
Operator preferences (hub directory prefs) add `paper` and `preferred_format`; they never change the method.

Input trusted: none; `rcpt` is whatever the SMTP client sent. Settings read (by the caller, passed in):
the resolution domain (Settings.resolution_domain) and hub.domains. `is_trusted_domain` comes from the
authorised-domains list (hub.directory.trust). One indexed statement per path; asyncpg prepares and caches them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import asyncpg

from hub.directory import normalize, store

_TYPE_RANK = {"PER": 0, "CAB": 1, "ORG": 2, "APP": 3}


@dataclass(frozen=True)
class Resolution:
    rcpt: str                 # as given
    address: str | None       # final mailbox, None when unresolved
    method: str               # "directory" | "national_id" | "trust_space_unlisted" | "hub_local" | "unresolved"
    kind: str                 # "practitioner" | "structure" | "unknown"
    paper: bool               # operator preference: paper only
    mailbox_type: str | None  # PER/ORG/APP/CAB
    national_id: str | None
    flagged: bool             # e.g. trust-space address absent from the directory
    reason: str               # human text, for the audit trail and the 550 text
    preferred_format: str | None = None   # operator preference (pdf, cda, ...), None when not set

    @property
    def resolved(self) -> bool:
        return self.address is not None


def _kind(mailbox_type: str | None, national_id: str | None) -> str:
    if national_id or mailbox_type in ("PER", "CAB"):
        return "practitioner"
    if mailbox_type in ("ORG", "APP"):
        return "structure"
    return "unknown"


def choose(rows: list, sender_structure: str | None) -> tuple[object, str]:
    """Pick one of a practitioner's mailboxes (rows with address, mailbox_type, finess, siret, structure_id,
    preferred_mailbox); return it and why. Pure."""
    preferred = rows[0]["preferred_mailbox"]
    s_finess, s_siret, s_raw = normalize.sender_structure(sender_structure)

    def at_sender(r) -> bool:
        return bool(s_raw) and ((s_finess is not None and r["finess"] == s_finess)
                                or (s_siret is not None and r["siret"] == s_siret)
                                or r["structure_id"] == s_raw)

    def key(r):
        return (r["address"] != preferred, _TYPE_RANK.get(r["mailbox_type"], 9), not at_sender(r), r["address"])

    best = min(rows, key=key)
    if len(rows) == 1:
        why = "the practitioner's only published mailbox"
    elif preferred and best["address"] == preferred:
        why = f"operator's preferred mailbox among {len(rows)}"
    elif at_sender(best) and sum(1 for r in rows if r["mailbox_type"] == best["mailbox_type"]) > 1:
        why = f"{best['mailbox_type']} mailbox at the sender's structure {s_raw} among {len(rows)}"
    else:
        why = f"{best['mailbox_type']} mailbox chosen among {len(rows)}"
    if preferred and best["address"] != preferred:
        why += f" (preferred {preferred} is no longer published)"
    return best, why


class Resolver:
    def __init__(self, *, resolution_domain: str, hub_domains: list[str],
                 is_trusted_domain: Callable[[str], bool]):
        self.resolution_domain = resolution_domain.lower().strip(".")
        self.hub_domains = frozenset(d.lower().strip(".") for d in hub_domains)
        self.is_trusted_domain = is_trusted_domain

    async def resolve(self, conn: asyncpg.Connection, rcpt: str, *,
                      sender_structure: str | None = None) -> Resolution:
        addr = normalize.address(rcpt)
        if addr is None:
            return _unresolved(rcpt, f"{rcpt!r} is not a mailbox address")
        row = await store.mailbox_by_address(conn, addr)
        if row is not None:
            return Resolution(
                rcpt=rcpt, address=row["address"], method="directory",
                kind=_kind(row["mailbox_type"], row["national_id"]), paper=row["paper"],
                mailbox_type=row["mailbox_type"], national_id=row["national_id"], flagged=False,
                reason=f"{row['mailbox_type']} mailbox published in the directory",
                preferred_format=row["preferred_format"])
        local, _, domain = addr.rpartition("@")
        if domain == self.resolution_domain:
            return await self._by_national_id(conn, rcpt, local, sender_structure)
        if domain in self.hub_domains:
            return await self._with_preference(conn, Resolution(
                rcpt=rcpt, address=addr, method="hub_local", kind="unknown", paper=False, mailbox_type=None,
                national_id=None, flagged=False, reason=f"address on the hub's own domain {domain}"))
        if self.is_trusted_domain(domain):
            return await self._with_preference(conn, Resolution(
                rcpt=rcpt, address=addr, method="trust_space_unlisted", kind="unknown", paper=False,
                mailbox_type=None, national_id=None, flagged=True,
                reason=f"{addr} is not in the directory, but {domain} is an authorised MSSanté domain"))
        return _unresolved(rcpt, f"{addr} is not in the MSSanté directory and {domain} is not an authorised "
                                 "MSSanté domain")

    async def _by_national_id(self, conn: asyncpg.Connection, rcpt: str, local: str,
                              sender_structure: str | None) -> Resolution:
        nid = normalize.national_id(local)
        if nid is None:
            return _unresolved(rcpt, f"{local!r} is not a national id (8+RPPS, 0+ADELI or an 11-digit RPPS)")
        rows = await store.mailboxes_by_national_id(conn, nid)
        if not rows:
            pref = await store.preference(conn, nid)
            return _unresolved(rcpt, f"no published mailbox for the practitioner {nid}",
                               national_id=nid, paper=bool(pref and pref["paper"]))
        best, why = choose(rows, sender_structure)
        paper = best["address_paper"] if best["address_paper"] is not None else bool(best["person_paper"])
        return Resolution(
            rcpt=rcpt, address=best["address"], method="national_id", kind="practitioner", paper=paper,
            mailbox_type=best["mailbox_type"], national_id=nid, flagged=False, reason=why,
            preferred_format=best["address_format"] or best["person_format"])

    async def _with_preference(self, conn: asyncpg.Connection, res: Resolution) -> Resolution:
        pref = await store.preference(conn, res.address)
        if pref is None:
            return res
        return dataclasses.replace(res, paper=pref["paper"], preferred_format=pref["preferred_format"])


def _unresolved(rcpt: str, reason: str, *, national_id: str | None = None, paper: bool = False) -> Resolution:
    return Resolution(rcpt=rcpt, address=None, method="unresolved", kind="unknown", paper=paper,
                      mailbox_type=None, national_id=national_id, flagged=False, reason=reason)
