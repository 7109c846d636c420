"""HPRIM Santé (records H/P/OBR/OBX/C/A/L) and HPRIM Net (12 header lines, ****LAB**** TEX/RES) parsers.

Input: untrusted bytes from a mail part, ISO-8859-1 (UTF-8 accepted when it decodes strictly), CR, CRLF or LF.
Output: one `LabReport` per patient. Malformed input raises `ParseError` with `where` = "line N" or "OBX[2].5"
(record type, 1-based occurrence, field). Field positions: FORMATS.md §2.3 and §2.4. Reads no settings.
"""

from __future__ import annotations

import re
from dataclasses import replace

from hub.errors import ParseError
from hub.transform.model import (Battery, LabReport, Party, Patient, Result, birth_given_names, distinct_flags,
                                 is_loinc_system, is_nir, request_status, result_status)
from hub.transform.parse.text import decode_text
from hub.transform.terminology.dates import decimal, fr_date, is_decimal, norm_ts, parse_range

_LINES = re.compile(r"\r\n|\r|\n")
_RECORD = re.compile(r"^[A-Z][A-Z0-9]{0,2}$")
_LOINC = re.compile(r"^\d{1,7}-\d$")
MAX_LINES = 200_000


def _lines(data: bytes) -> list[str]:
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError("HPRIM: expected bytes")
    lines = _LINES.split(decode_text(bytes(data), "HPRIM"))
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


def _records(data: bytes) -> tuple[_Delims, list[_Record], int]:
    """(delimiters, records with A continuations joined, number of non-empty lines)."""
    raw: list[tuple[int, str]] = []
    delims: _Delims | None = None
    lines = 0
    for number, line in enumerate(_lines(data), 1):
        if not line.strip():
            continue
        lines += 1
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
            raise ParseError("HPRIM Santé: not a record (no record type before the first delimiter)",
                             where=f"line {number}")
        counts[kind] = counts.get(kind, 0) + 1
        if kind == "H":   # H-2 is the delimiter field itself: shift so that fields[n] is H-n
            fields = ["H", "", *fields[1:]]
        records.append(_Record(kind, fields, number, counts[kind]))
    return delims, records, lines


def parse_hprim_sante(data: bytes) -> list[LabReport]:
    """One LabReport per P record. The file must be provably complete: it ends with its L record (whose P-record
    and line counts, when the sender gives them, must agree), every P has an OBR and every OBR at least one OBX."""
    d, records, lines = _records(data)
    header = records[0]
    sender_c = d.comps(header.get(5)) + [""]
    receiver_c = d.comps(header.get(10)) + [""]
    file_date = norm_ts(header.get(14), header.where(14))
    reports: list[dict] = []
    current: dict | None = None
    last: str = ""
    end: _Record | None = None
    for rec in records[1:]:
        if end is not None:
            raise ParseError("HPRIM Santé: record after the L (end) record", where=f"line {rec.line}")
        if rec.kind == "P":
            current = {"patient": _patient(d, rec), "obrs": [], "comments": [], "line": rec.line}
            reports.append(current)
        elif rec.kind == "OBR":
            if current is None:
                raise ParseError("OBR before any P record", where=f"line {rec.line}")
            current["obrs"].append({"rec": rec, "results": [], "comments": []})
        elif rec.kind == "OBX":
            if current is None or not current["obrs"]:
                raise ParseError("OBX before any OBR record", where=f"line {rec.line}")
            current["obrs"][-1]["results"].append(_result(d, rec, len(current["obrs"])))
        elif rec.kind == "C":
            text = d.unescape(rec.get(3)).strip()
            if current is not None and text:
                results = current["obrs"][-1]["results"] if current["obrs"] else []
                if last == "OBX" and results:
                    res = results[-1]
                    res["comments"] = (*res["comments"], text)
                elif last == "OBR":
                    current["obrs"][-1]["comments"].append(text)
                else:
                    current["comments"].append(text)
        elif rec.kind == "L":
            end = rec
        last = rec.kind if rec.kind != "C" else last
    if end is None:
        raise ParseError("HPRIM Santé: no L (end) record: the file is incomplete (cut in transit?)",
                         where=f"line {records[-1].line}")
    if not reports:
        raise ParseError("HPRIM Santé: no P (patient) record", where="P")
    _check_counts(end, len(reports), records, lines)
    out = []
    for rep in reports:
        if not rep["obrs"]:
            raise ParseError("HPRIM Santé: a patient without any request (OBR): the file is incomplete",
                             where=f"line {rep['line']}")
        for obr in rep["obrs"]:
            if not obr["results"]:
                raise ParseError("HPRIM Santé: a request (OBR) without any result (OBX): the file is incomplete",
                                 where=f"line {obr['rec'].line}")
        out.append(_report(d, rep, sender_c, receiver_c, file_date))
    return out


def _check_counts(end: "_Record", patients: int, records: list["_Record"], lines: int) -> None:
    declared_p, declared_lines = end.get(3).strip(), end.get(4).strip()     # L|seq||patients|lines
    if declared_p.isdigit() and int(declared_p) != patients:
        raise ParseError(f"HPRIM Santé: the L record declares {int(declared_p)} patient(s), the file has {patients}: "
                         "the file is incomplete", where=end.where(3))
    if declared_lines.isdigit():
        # senders count the records, or the lines; with or without H and L: any of these agreeing is complete
        counts = {len(records), len(records) - 1, len(records) - 2, lines, lines - 1, lines - 2}
        if int(declared_lines) not in counts:
            raise ParseError(f"HPRIM Santé: the L record declares {int(declared_lines)} lines, the file has "
                             f"{lines}: the file is incomplete", where=end.where(4))


def _report(d: _Delims, rep: dict, sender_c: list[str], receiver_c: list[str], file_date: str) -> LabReport:
    first: _Record = rep["obrs"][0]["rec"]
    order = [c for c in d.comps(first.get(3)) if c][:1] or [c for c in d.comps(first.get(2)) if c][:1] or [""]
    biologist = _biologist(d, next((o["rec"] for o in rep["obrs"] if o["rec"].get(32)), first))
    batteries, results = [], []
    for obr in rep["obrs"]:
        rec = obr["rec"]
        batteries.append(replace(_battery(d, rec), status=request_status(rec.get(25), rec.where(25)),
                                 comments=tuple(obr["comments"])))
        results.extend(Result(**r) for r in obr["results"])
    report_date = next((norm_ts(o["rec"].get(22), o["rec"].where(22)) for o in reversed(rep["obrs"])
                        if o["rec"].get(22).strip()), "") or file_date
    return LabReport(
        patient=rep["patient"],
        sender=replace(biologist, local_code=sender_c[0], org_name=sender_c[1]),
        requester=_xcn(d, first.get(16)), receiver=Party(local_code=receiver_c[0], family=receiver_c[1]),
        order_id=order[0], lab_file=rep["patient"].local_id,
        collected_at=norm_ts(first.get(7), first.where(7)), received_at=norm_ts(first.get(14), first.where(14)),
        report_date=report_date, results=tuple(results), comments=tuple(rep["comments"]),
        status=first.get(25) or "F", source="hprim_sante", batteries=tuple(batteries))


def _flags(d: "_Delims", value: str) -> tuple[str, ...]:
    """OBX-8, repeated (`H^A` with the usual delimiters) or written as components (`H~A`): every flag, in order."""
    return distinct_flags(c for rep in value.split(d.rep) for c in d.comps(rep))


def _xcn(d: _Delims, value: str) -> Party:
    """`id~family~given...`: RPPS when the id is 11 digits (or 12 with the leading 8)."""
    c = d.comps(value) + ["", "", ""]
    ident = c[0].strip()
    rpps = ident[1:] if len(ident) == 12 and ident.startswith("8") and ident.isdigit() else ident
    return Party(rpps=rpps if len(rpps) == 11 and rpps.isdigit() else "", local_code=ident,
                 family=c[1].strip(), given=c[2].strip())


def _biologist(d: _Delims, obr: "_Record") -> Party:
    """OBR-32 (validating biologist) `id~family~given`."""
    return _xcn(d, obr.get(32))


def _battery(d: _Delims, obr: "_Record") -> Battery:
    """OBR-4, when it names one test (`code~label~system[~altcode~altlabel~LN]`): the battery of this request."""
    reps = [r for r in obr.get(4).split(d.rep) if r.strip()]
    if len(reps) != 1:
        return Battery()
    c = d.comps(reps[0]) + [""] * 6
    loinc, label = (c[0], c[1]) if is_loinc_system(c[2]) else (c[3], c[4]) if is_loinc_system(c[5]) else ("", "")
    return Battery(local_code=c[0], label=c[1], loinc=loinc if _LOINC.match(loinc) else "", loinc_label=label)


def _patient(d: _Delims, rec: _Record) -> Patient:
    name = d.comps(rec.get(5)) + ["", ""]
    birth_name = d.comps(rec.get(6))[0]
    sex = rec.get(8).strip().upper()
    if sex not in ("", "M", "F", "U"):
        raise ParseError("invalid sex (expected M, F or U)", where=rec.where(8))
    nir = re.sub(r"\s", "", rec.get(4))
    family = (birth_name or name[0]).strip()
    first = name[1].strip()
    addr = d.comps(rec.get(10)) + [""] * 5          # street~street 2~city~state~postcode
    city = " ".join(x.strip() for x in (addr[4], addr[2]) if x.strip())
    return Patient(local_id=rec.get(3) or rec.get(2), ins=nir if is_nir(nir) else "",
                   family=family, given=birth_given_names(first, name[2]), first_name=first,
                   used_family=name[0].strip(), birth_date=norm_ts(rec.get(7), rec.where(7)), sex=sex,
                   address=tuple(x.strip() for x in (addr[0], addr[1], city) if x.strip()))


def _result(d: _Delims, rec: _Record, battery: int) -> dict:
    code = d.comps(rec.get(3)) + [""] * 6
    if not code[0]:
        raise ParseError("OBX without analyte code", where=rec.where(3))
    kind = rec.get(2) or "ST"
    reps = rec.get(5).split(d.rep) if rec.get(5) else []    # repeated values (two organisms, lines of a TX)
    if kind in ("CE", "CWE"):                                 # coded: `code~label~system`, the label is what is meant
        value = ", ".join(next((t.strip() for t in (c[1], c[4], c[0], c[3]) if t.strip()), "")
                          for c in (d.comps(r) + [""] * 5 for r in reps))
    else:
        value = ("\n" if kind in ("TX", "FT") else ", ").join(d.unescape(r) for r in reps)
    range_text = d.unescape(rec.get(7)).strip()
    low, high, low_open, high_open = parse_range(range_text, d.unescape(rec.get(6)))
    loinc, loinc_label = "", ""
    local, label, system = code[0], code[1], code[2] or "L"
    if is_loinc_system(system) and _LOINC.match(code[0]):  # LOINC first, the local code as alternate
        loinc, loinc_label = code[0], code[1]
        if code[3]:
            local, label, system = code[3], code[4] or code[1], code[5] or "L"
    elif is_loinc_system(code[5]) and _LOINC.match(code[3]):  # local first, LOINC as alternate (components 4-6)
        loinc, loinc_label = code[3], code[4]
    return {"local_code": local, "label": label, "code_system": system, "loinc": loinc, "loinc_label": loinc_label,
            "value": decimal(value) if kind == "NM" and is_decimal(value) else value,
            "value_type": kind, "unit": d.unescape(rec.get(6)).strip(), "range_low": low, "range_high": high,
            "range_low_open": low_open, "range_high_open": high_open,
            "range_text": range_text, "flags": _flags(d, rec.get(8)),
            "status": result_status(rec.get(11), rec.where(11)),
            "observed_at": norm_ts(rec.get(14), rec.where(14)), "comments": (), "battery": battery}


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
                      given=h[2], first_name=h[2].split(" ")[0], used_family=h[1], birth_date=birth, sex=sex,
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
            raise ParseError("HPRIM Net: unexpected line in the ****LAB**** block (not TEX| nor RES|)", where=where)
    else:
        raise ParseError("HPRIM Net: missing ****FIN****: the file is incomplete (cut in transit?)",
                         where=f"line {len(lines)}")
    if not results:
        raise ParseError("HPRIM Net: a patient block without any result (RES line)", where=f"line {start + 1}")
    report = LabReport(patient=patient, sender=sender, receiver=receiver, lab_file=h[8], order_id=h[8],
                       report_date=report_date, results=tuple(results), comments=tuple(comments),
                       source="hprim_net")
    return i, report


def _net_result(line: str, where: str) -> Result:
    """`RES|label|code|type|value|unit|low|high|flag|status|value2|unit2|low2|high2`. A bound may be written
    `<3.0` or `>60` (in either field), or the low field may hold the whole range (`4,1-5,9`)."""
    f = line.split("|")[1:]
    while len(f) > 13 and not f[-1].strip():      # a line ending with its delimiter, or empty trailing fields
        f.pop()
    if len(f) < 4 or len(f) > 13:
        raise ParseError(f"HPRIM Net: RES line has {len(f)} fields (expected 4 to 13)", where=where)
    f += [""] * (13 - len(f))
    label, code, kind, value, unit, low, high, flag, status, value2, unit2, low2, high2 = (x.strip() for x in f)
    if not code:
        raise ParseError("HPRIM Net: RES line without code", where=f"{where}, field 2")
    vtype = _NET_TYPES.get(kind, "ST")
    lo, hi, lo_open, hi_open, text = _net_range(low, high, where, 6)
    lo2, hi2, _, _, _ = _net_range(low2, high2, where, 12)
    return Result(local_code=code, label=label, value=decimal(value) if vtype == "NM" and is_decimal(value) else value,
                  value_type=vtype, unit=unit, range_low=lo, range_high=hi, range_low_open=lo_open,
                  range_high_open=hi_open, range_text=text, flags=(flag,) if flag else (),
                  status=result_status(status, f"{where}, field 9"),
                  value2=decimal(value2) if is_decimal(value2) else value2, unit2=unit2, range2_low=lo2,
                  range2_high=hi2)


def _net_range(low: str, high: str, where: str, field: int) -> tuple[str, str, bool, bool, str]:
    """(low, high, low_open, high_open, text as written) from the two bound fields."""
    if not low and not high:
        return "", "", False, False, ""
    text = f"{low} - {high}" if low and high else low or high
    lo = hi = ""
    lo_open = hi_open = False
    for n, bound in ((field, low), (field + 1, high)):
        if not bound:
            continue
        if is_decimal(bound):
            lo, hi = (decimal(bound), hi) if n == field else (lo, decimal(bound))
            continue
        r_lo, r_hi, r_lo_open, r_hi_open = parse_range(bound)
        if not (r_lo or r_hi):
            raise ParseError("HPRIM Net: a normal bound is neither a number nor a range like <3.0 or >60",
                             where=f"{where}, field {n}")
        lo, hi = r_lo or lo, r_hi or hi
        lo_open, hi_open = lo_open or r_lo_open, hi_open or r_hi_open
    if lo and hi and float(lo) > float(hi):        # no interval: the range goes as the laboratory wrote it
        return "", "", False, False, text
    return lo, hi, lo_open, hi_open, text
