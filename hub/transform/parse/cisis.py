"""CI-SIS "Transmission de document(s) CDA-R2 en HL7v2" (ORU^R01 v2.5 / MDM^T02 v2.6, FORMATS.md §3.2).

Extracts from an untrusted, already parsed `Er7`: each CDA carried base64 in an ED OBX-5 (with its OBX-3 document
code and OBX-11 status F/C/D), the MetaDMPMSS flags (checked against the allowed combinations), the mail body
(CORPSMAIL_PS / CORPSMAIL_PATIENT), the intended recipients (PRT-4 `RCT^^participation` or `RCT^^HL70912`,
address in PRT-15.4), Reply-To and sender. Builds the ACK (`MSA|AA|<MSH-10>`). Malformed content is a ParseError
naming the segment and field. Reads no settings.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

from hub.errors import ParseError
from hub.transform.parse.hl7v2 import Er7, esc

STATUS = {"F": "initial", "C": "replace", "D": "delete"}
MASKS = ("MASQUE_PS", "INVISIBLE_PATIENT", "INVISIBLE_REP_LEGAUX")
PATIENT_DOMAIN = "@patient.mssante.fr"


@dataclass(frozen=True)
class CarriedDocument:
    cda: bytes
    doc_code: str
    doc_label: str
    status: str               # F / C / D
    where: str                # "OBX[1].5"


@dataclass(frozen=True)
class CisisRequest:
    control_id: str
    documents: tuple[CarriedDocument, ...]
    flags: dict[str, str]     # MetaDMPMSS code -> Y / N
    recipients: tuple[str, ...]
    reply_to: str
    sender: str
    body: str
    warnings: tuple[str, ...]


def _b64(value: str, where: str) -> bytes:
    try:
        return binascii.a2b_base64(value.encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError) as exc:
        raise ParseError(f"invalid base64: {exc}", where=where) from None


def _check_flags(flags: dict[str, str], where: dict[str, str]) -> None:
    ps, pat = flags.get("DESTMSSANTEPS"), flags.get("DESTMSSANTEPAT")
    if ps is None and pat is None:
        return
    at = where.get("DESTMSSANTEPAT") or where.get("DESTMSSANTEPS")
    if ps == "Y" and pat == "Y":
        bad = [m for m in MASKS if flags.get(m) == "Y"]
        if bad:
            raise ParseError(f"MetaDMPMSS: sending to professionals and patient requires {bad[0]}=N", where=at)
    elif ps == "Y" and pat == "N":
        if flags.get("INVISIBLE_PATIENT") != "Y":
            raise ParseError("MetaDMPMSS: professionals only requires INVISIBLE_PATIENT=Y", where=at)
    elif ps == "N" and pat == "Y":
        if flags.get("DESTDMP") != "N":
            raise ParseError("MetaDMPMSS: patient only requires DESTDMP=N", where=at)
    else:
        raise ParseError("MetaDMPMSS: no MSSanté recipient (DESTMSSANTEPS and DESTMSSANTEPAT not both set, or both N)",
                         where=at)


def read_cisis(msg: Er7, patient_ins: str = "") -> CisisRequest:
    documents: list[CarriedDocument] = []
    flags: dict[str, str] = {}
    flag_where: dict[str, str] = {}
    recipients: list[str] = []
    warnings: list[str] = []
    reply_to = sender = body = ""
    for seg in msg.segments:
        if seg.name == "OBX":
            code = msg.comps(seg.get(3), 3)
            if code[2] == "MetaDMPMSS":
                if seg.get(2) == "ED":
                    ed = msg.comps(seg.get(5), 5)
                    if code[0] in ("CORPSMAIL_PS", "CORPSMAIL_PATIENT") and not body:
                        try:
                            body = _b64(ed[4], seg.where(5)).decode("utf-8", "replace")
                        except ParseError:   # the body is not worth refusing the document for
                            usable = ed[4].strip()[: len(ed[4].strip()) // 4 * 4]
                            body = _b64(usable, seg.where(5)).decode("utf-8", "replace")
                            warnings.append(f"{seg.where(5)}: {code[0]} base64 truncated; body decoded in part")
                    continue
                value = msg.comps(seg.get(5))[0].upper()
                if value not in ("Y", "N"):
                    raise ParseError(f"MetaDMPMSS {code[0]} must be Y or N, got {value!r}", where=seg.where(5))
                flags[code[0]] = value
                flag_where[code[0]] = seg.where(5)
            elif seg.get(2) == "ED":
                ed = msg.comps(seg.get(5), 5)
                if ed[3].lower() != "base64" or ed[2].upper() != "XML":
                    continue      # e.g. the mail subject/body OBX of the LPS variant
                status = seg.get(11).upper()
                if status not in STATUS:
                    raise ParseError(f"OBX-11 must be F, C or D, got {status!r}", where=seg.where(11))
                documents.append(CarriedDocument(_b64(ed[4], seg.where(5)), code[0], code[1], status,
                                                 seg.where(5)))
        elif seg.name == "PRT":
            role = msg.comps(seg.get(4), 3)
            if role[2] and role[2] not in ("participation", "HL70912"):
                raise ParseError(f"unknown PRT-4 coding system {role[2]!r}", where=seg.where(4))
            address = ""
            for rep in msg.reps(seg.get(15)):
                xtn = msg.comps(rep, 4)
                if xtn[3]:
                    address = xtn[3].strip()
                    break
            if address and ("@" not in address or any(c.isspace() for c in address)):
                raise ParseError("invalid mail address (no @, or a space in it)", where=seg.where(15))
            if role[0] == "RCT" and address:
                recipients.append(address)
            elif role[0] == "REPLY" and address:
                reply_to = address
            elif role[0] == "SB" and address:
                sender = address
    if not documents:
        raise ParseError("no CDA carried in an ED OBX (OBX-2 ED, OBX-5 ^TEXT^XML^Base64^...)", where="OBX")
    _check_flags(flags, flag_where)
    kept = []
    for address in recipients:
        is_patient = address.lower().endswith(PATIENT_DOMAIN)
        if is_patient and flags.get("DESTMSSANTEPAT") == "N" or not is_patient and flags.get("DESTMSSANTEPS") == "N":
            warnings.append(f"recipient dropped by MetaDMPMSS flags: {'patient' if is_patient else 'professional'}")
            continue
        if is_patient and patient_ins and address.split("@")[0] != patient_ins:
            warnings.append("patient recipient address does not match the INS in PID-3")
        kept.append(address)
    return CisisRequest(msg.msh.get(10), tuple(documents), flags, tuple(kept), reply_to, sender, body,
                        tuple(warnings))


def build_ack(msg: Er7, *, now: str, code: str = "AA", text: str = "", control_id: str = "") -> bytes:
    """ACK to the sender: MSH with sender/receiver swapped, `MSA|<code>|<MSH-10>`."""
    m = msg.msh
    trigger = msg.comps(m.get(9), 2)[1]
    version = m.get(12) or "2.5"
    msa = f"MSA|{code}|{esc(m.get(10))}" + (f"|{esc(text)}" if text else "")
    return (f"MSH|^~\\&|{m.get(5)}|{m.get(6)}|{m.get(3)}|{m.get(4)}|{now}||ACK^{trigger}^ACK|"
            f"{esc(control_id or m.get(10) + 'A')}|P|{version}|||||FRA|UNICODE UTF-8\r{msa}\r").encode("utf-8")
