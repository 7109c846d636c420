"""HPRIM Santé (records H/P/OBR/OBX/C/A/L) and HPRIM Net (12 header lines, ****LAB**** TEX/RES) parsers.

Input: untrusted bytes from a mail part, ISO-8859-1 (UTF-8 accepted when it decodes strictly), CR, CRLF or LF.
Output: one `LabReport` per patient. Malformed input raises `ParseError` with `where` = "line N" or "OBX[2].5"
(record type, 1-based occurrence, field). Field positions: FORMATS.md §2.3 and §2.4. Reads no settings.
"""

from __future__ import annotations

import re

from hub.errors import ParseError
from hub.transform.terminology.dates import decimal, decode_text, fr_date, is_decimal, norm_ts, split_range
from hub.transform.model import LabReport, Party, Patient, Result, is_nir

_LINES = re.compile(r"\r\n|\r|\n")
_RECORD = re.compile(r"^[A-Z][A-Z0-9]{0,2}$")
MAX_LINES = 200_000


def _lines(data: bytes) -> list[str]:
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError("HPRIM: expected bytes")
    lines = _LINES.split(decode_text(bytes(data)))
    if len(lines) > MAX_LINES:
        raise ParseError(f"HPRIM: more than {MAX_LINES} lines")
    return lines


# ---------------------------------------------------------------- HPRIM Santé

class _Delims:
    def __init__(self, header: str):
        if len(header) < 6 or header[0] != "H":
            raise ParseError("HPRIM Santé: first record must be H with its 5 delimiters", where="line 1")
        self.field, self.comp, self.rep, self.esc, self.sub = header[1:6]
        chars = header[1:6]
        if len(set(chars)) != 5 or any(c.isalnum() or c.isspace() for c in chars):
            raise ParseError(f"HPRIM Santé: invalid delimiters {chars!r}", where="H.2")

    def unescape(self, text: str) -> str:
        if self.esc not in text:
            return text
        e = self.esc
        for code, char in (("F", self.field), ("S", self.comp), ("R", self.rep), ("T", self.sub), ("E", e)):
            text = text.replace(f"{e}{code}{e}", char)
        return text

    def comps(self, text: str) -> list[str]:
        return [self.unescape(c) for c in text.split(self.comp)]


class _Record:
    __slots__ = ("kind", "fields", "line", "occurrence")

    def __init__(self, kind: str, fields: list[str], line: int, occurrence: int):
        self.kind, self.fields, self.line, self.occurrence = kind, fields, line, occurrence

    def get(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def where(self, n: int) -> str:
        return f"{self.kind}[{self.occurrence}].{n}"


def _records(data: bytes) -> tuple[_Delims, list[_Record]]:
    raw: list[tuple[int, str]] = []
    delims: _Delims | None = None
    for number, line in enumerate(_lines(data), 1):
        if not line.strip():
            continue
        if delims is None:
            delims = _Delims(line)
        if line.startswith("A" + delims.field):
            if not raw:
                raise ParseError("HPRIM Santé: A continuation record before any record", where=f"line {number}")
            prev_number, prev = raw[-1]
            raw[-1] = (prev_number, prev + line[2:])
            continue
        raw.append((number, line))
    if delims is None:
        raise ParseError("HPRIM Santé: no H record", where="line 1")
    counts: dict[str, int] = {}
    records = []
    for number, line in raw:
        fields = line.split(delims.field)
        kind = fields[0]
        if not _RECORD.match(kind):
            raise ParseError(f"HPRIM Santé: not a record: {line[:20]!r}", where=f"line {number}")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "H":   # H-2 is the delimiter field itself: shift so that fields[n] is H-n
            fields = ["H", "", *fields[1:]]
        records.append(_Record(kind, fields, number, counts[kind]))
    return delims, records


def parse_hprim_sante(data: bytes) -> list[LabReport]:
    """One LabReport per P record."""
    d, records = _records(data)
    header = records[0]
    sender_c = d.comps(header.get(5))
    receiver_c = d.comps(header.get(10)) + [""]
    file_date = norm_ts(header.get(14), header.where(14))
    sender = Party(local_code=sender_c[0], org_name=sender_c[1] if len(sender_c) > 1 else "")
    receiver = Party(local_code=receiver_c[0], family=receiver_c[1])
    reports: list[dict] = []
    current: dict | None = None
    last: str = ""
    for rec in records[1:]:
        if rec.kind == "P":
            current = {"patient": _patient(d, rec), "results": [], "comments": [], "obr": None}
            reports.append(current)
        elif rec.kind == "OBR":
            if current is None:
                raise ParseError("OBR before any P record", where=f"line {rec.line}")
            current["obr"] = rec
        elif rec.kind == "OBX":
            if current is None or current["obr"] is None:
                raise ParseError("OBX before any OBR record", where=f"line {rec.line}")
            current["results"].append(_result(d, rec))
        elif rec.kind == "C":
            text = d.unescape(rec.get(3)).strip()
            if current is not None and text:
                if last == "OBX" and current["results"]:
                    res = current["results"][-1]
                    res["comments"] = (*res["comments"], text)
                else:
                    current["comments"].append(text)
        elif rec.kind == "L":
            break
        last = rec.kind
    if not reports:
        raise ParseError("HPRIM Santé: no P (patient) record", where="P")
    out = []
    for rep in reports:
        obr: _Record | None = rep["obr"]
        requester = Party()
        order = collected = received = ""
        status = "F"
        biologist = Party()
        if obr is not None:
            order = [c for c in d.comps(obr.get(3)) if c][:1] or [c for c in d.comps(obr.get(2)) if c][:1] or [""]
            order = order[0]
            collected = norm_ts(obr.get(7), obr.where(7))
            received = norm_ts(obr.get(14), obr.where(14))
            req = d.comps(obr.get(16)) + [""]
            requester = Party(local_code=req[0], family=req[1])
            status = obr.get(25) or "F"
            bio = d.comps(obr.get(32)) + ["", ""]
            biologist = Party(local_code=bio[0], family=bio[1], given=bio[2])
        out.append(LabReport(
            patient=rep["patient"],
            sender=Party(local_code=sender.local_code, org_name=sender.org_name, family=biologist.family,
                         given=biologist.given),
            requester=requester, receiver=receiver, order_id=order, lab_file=rep["patient"].local_id,
            collected_at=collected, received_at=received, report_date=file_date,
            results=tuple(Result(**r) for r in rep["results"]), comments=tuple(rep["comments"]),
            status=status, source="hprim_sante"))
    return out


def _patient(d: _Delims, rec: _Record) -> Patient:
    name = d.comps(rec.get(5)) + [""]
    birth_name = d.comps(rec.get(6))[0]
    sex = rec.get(8).strip().upper()
    if sex not in ("", "M", "F", "U"):
        raise ParseError(f"invalid sex {sex!r}", where=rec.where(8))
    nir = re.sub(r"\s", "", rec.get(4))
    family = (birth_name or name[0]).strip()
    return Patient(local_id=rec.get(3) or rec.get(2), ins=nir if is_nir(nir) else "",
                   family=family, given=name[1].strip(), used_family=name[0].strip(),
                   birth_date=norm_ts(rec.get(7), rec.where(7)), sex=sex,
                   address=tuple(c for c in d.comps(rec.get(10)) if c))


def _result(d: _Delims, rec: _Record) -> dict:
    code = d.comps(rec.get(3)) + ["", ""]
    if not code[0]:
        raise ParseError("OBX without analyte code", where=rec.where(3))
    kind = rec.get(2) or "ST"
    value = d.unescape(rec.get(5))
    range_text = d.unescape(rec.get(7))
    low, high = split_range(range_text)
    return {"local_code": code[0], "label": code[1], "code_system": code[2] or "L",
            "value": decimal(value) if kind == "NM" and is_decimal(value) else value,
            "value_type": kind, "unit": d.unescape(rec.get(6)), "range_low": low, "range_high": high,
            "range_text": range_text, "flag": rec.get(8).strip(), "status": rec.get(11) or "F",
            "observed_at": norm_ts(rec.get(14), rec.where(14)), "comments": ()}


# ---------------------------------------------------------------- HPRIM Net

LAB, FIN, FINFICHIER = "****LAB****", "****FIN****", "****FINFICHIER****"
_NET_TYPES = {"N": "NM", "A": "ST", "T": "TX"}


def parse_hprim_net(data: bytes) -> list[LabReport]:
    """One LabReport per patient block (12 header lines ... ****FIN****)."""
    lines = _lines(data)
    reports = []
    i = 0
    while i < len(lines):
        while i < len(lines) and not lines[i].strip():
            i += 1
        if i >= len(lines) or lines[i].strip() == FINFICHIER:
            break
        i, report = _net_block(lines, i)
        reports.append(report)
    if not reports:
        raise ParseError("HPRIM Net: no patient block", where="line 1")
    return reports


def _net_block(lines: list[str], start: int) -> tuple[int, LabReport]:
    if start + 12 > len(lines):
        raise ParseError("HPRIM Net: fewer than 12 header lines", where=f"line {start + 1}")
    h = [line.strip() for line in lines[start:start + 12]]
    if any(x in (LAB, FIN, FINFICHIER) for x in h):
        raise ParseError("HPRIM Net: end marker inside the 12 header lines", where=f"line {start + 1}")
    birth = fr_date(h[6], f"line {start + 7}") if h[6] else ""
    nir = re.sub(r"\s", "", h[7])
    sex = {"1": "M", "2": "F"}.get(nir[:1], "") if len(nir) in (13, 15) else ""
    postcode, _, city = h[5].partition(" ")
    patient = Patient(local_id=h[0], ins=nir if is_nir(nir) else "", family=h[1],
                      given=h[2], used_family=h[1], birth_date=birth, sex=sex,
                      address=tuple(x for x in (h[3], h[4], city.strip(), postcode) if x))
    raw_sender, raw_receiver = lines[start + 10], lines[start + 11]
    sender = Party(local_code=raw_sender[:10].strip(), org_name=raw_sender[10:].strip())
    receiver = Party(local_code=raw_receiver[:10].strip(), family=raw_receiver[10:].strip())
    report_date = fr_date(h[9], f"line {start + 10}") if h[9] else ""
    results: list[Result] = []
    comments: list[str] = []
    i = start + 12
    in_lab = False
    while i < len(lines):
        line = lines[i].rstrip()
        where = f"line {i + 1}"
        i += 1
        if line.strip() == LAB:
            in_lab = True
        elif line.strip() == FIN:
            break
        elif line.strip() == FINFICHIER:
            i -= 1
            break
        elif in_lab and line.startswith("TEX|"):
            if line[4:].strip():
                comments.append(line[4:].strip())
        elif in_lab and line.startswith("RES|"):
            results.append(_net_result(line, where))
        elif in_lab and line.strip():
            raise ParseError(f"HPRIM Net: unexpected line in ****LAB**** block: {line[:20]!r}", where=where)
    else:
        raise ParseError("HPRIM Net: missing ****FIN****", where=f"line {len(lines)}")
    report = LabReport(patient=patient, sender=sender, receiver=receiver, lab_file=h[8], order_id=h[8],
                       report_date=report_date, results=tuple(results), comments=tuple(comments),
                       source="hprim_net")
    return i, report


def _net_result(line: str, where: str) -> Result:
    f = line.split("|")[1:]
    if len(f) < 4 or len(f) > 13:
        raise ParseError(f"HPRIM Net: RES line has {len(f)} fields (expected 4 to 13)", where=where)
    f += [""] * (13 - len(f))
    label, code, kind, value, unit, low, high, flag, status = (x.strip() for x in f[:9])
    if not code:
        raise ParseError("HPRIM Net: RES line without code", where=f"{where}, field 2")
    vtype = _NET_TYPES.get(kind, "ST")
    for n, bound in ((6, low), (7, high)):
        if bound and not is_decimal(bound):
            raise ParseError(f"HPRIM Net: normal bound {bound!r} is not a number", where=f"{where}, field {n}")
    return Result(local_code=code, label=label, value=decimal(value) if vtype == "NM" and is_decimal(value) else value,
                  value_type=vtype, unit=unit, range_low=decimal(low) if low else "",
                  range_high=decimal(high) if high else "",
                  range_text=f"{low} - {high}" if low and high else "", flag=flag, status=status or "F")
