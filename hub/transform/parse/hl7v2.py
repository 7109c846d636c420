"""HL7 v2 (ER7) reading: a small strict parser, the LAB-3 ORU^R01 reader, and ER7 escaping.

Input: untrusted bytes, segments separated by CR, CRLF or LF (the ANS samples use LF), delimiters read from MSH.
`parse_er7` raises `ParseError` with `where` like "line 3" or "OBX[2].5". `read_lab_oru` turns a structured
LAB-3 ORU^R01 (one OBX per analyte) into a `LabReport`, refusing a message cut in transit.
Reads no settings.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace

from hub.errors import ParseError
from hub.transform.model import (INS_OIDS, Battery, LabReport, Party, Patient, Result, birth_given_names,
                                 distinct_flags, is_loinc_system, is_nir, request_status, result_status)
from hub.transform.parse.text import decode_text
from hub.transform.terminology.dates import decimal, is_decimal, norm_ts, parse_range

_SEGMENTS = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
_LOINC = re.compile(r"^\d{1,7}-\d$")
MAX_SEGMENTS = 100_000
_HEX = re.compile(r"^(?:[0-9A-Fa-f]{2})+$")
_SIGNED = re.compile(r"^[+-]?\d{0,3}$")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


@dataclass(frozen=True)
class Segment:
    name: str
    fields: tuple[str, ...]    # fields[n] is <name>-n (MSH re-aligned)
    line: int
    occurrence: int            # 1-based among segments of the same name

    def get(self, n: int) -> str:
        return self.fields[n] if n < len(self.fields) else ""

    def where(self, n: int) -> str:
        return f"{self.name}[{self.occurrence}].{n}"


class Er7:
    """A parsed message: segments in order and the encoding characters."""

    def __init__(self, segments: list[Segment], fs: str, cs: str, rs: str, esc: str, ss: str):
        self.segments = segments
        self.fs, self.cs, self.rs, self.esc, self.ss = fs, cs, rs, esc, ss
        self._escape: re.Pattern | None = None
        self._chars: dict[str, str] = {}

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def unescape(self, text: str) -> str:
        """ER7 escapes (HL7 v2.5 §2.7), in one pass: delimiters, `.br` / `.sp` line breaks, `X` hex data; the
        highlighting (`H`, `N`) and formatting commands are dropped; anything else stays as written."""
        e = self.esc
        if not e or e not in text:
            return text
        if self._escape is None:
            self._escape = re.compile(re.escape(e) + "([^" + re.escape(e) + "]{1,32})" + re.escape(e))
            self._chars = {"F": self.fs, "S": self.cs, "R": self.rs, "T": self.ss, "E": e, "H": "", "N": "",
                           ".br": "\n", ".fi": "", ".nf": "", ".ce": ""}
        return self._escape.sub(self._char, text)

    def _char(self, m: re.Match) -> str:
        seq = m.group(1)
        if seq in self._chars:
            return self._chars[seq]
        if seq.startswith(".sp"):
            return "\n" * (int(seq[3:]) if seq[3:].isdigit() and int(seq[3:]) <= 10 else 1)
        if seq[:3] in (".in", ".ti", ".sk") and _SIGNED.match(seq[3:]):
            return ""
        if seq[0] == "X" and _HEX.match(seq[1:]):
            raw = bytes.fromhex(seq[1:])
            try:
                char = raw.decode("utf-8")
            except UnicodeDecodeError:
                char = raw.decode("cp1252", "replace")
            char = char.replace("\r\n", "\n").replace("\r", "\n")
            if not _CONTROL.search(char):
                return char
        return m.group(0)

    def reps(self, value: str) -> list[str]:
        return value.split(self.rs) if value else []

    def comps(self, value: str, n: int = 0) -> list[str]:
        c = [self.unescape(x) for x in value.split(self.cs)]
        return c + [""] * (n - len(c))

    def subs(self, value: str, n: int = 0) -> list[str]:
        c = value.split(self.ss)
        return c + [""] * (n - len(c))


_LATIN9 = frozenset({"8859/15", "ISO-8859-15", "ISO8859-15", "LATIN-9"})


def _declared_charset(data: bytes) -> str:
    """MSH-18 (character set, HL7 table 0211) read from the raw MSH (its first field is ASCII): 'iso-8859-15' when
    it names Latin-9, else '' (UTF-8 is recognised by decoding, `8859/1` is the default)."""
    msh = _SEGMENTS.split(data[:4096].decode("ascii", "replace"), 1)[0].lstrip("\x0b")
    if not msh.startswith("MSH") or len(msh) < 4:
        return ""
    fields = msh.split(msh[3])
    return "iso-8859-15" if len(fields) > 17 and fields[17].strip().upper() in _LATIN9 else ""


def parse_er7(data: bytes) -> Er7:
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError("HL7 v2: expected bytes")
    text = decode_text(bytes(data), "HL7 v2", _declared_charset(bytes(data))).lstrip("\x0b").rstrip("\x1c\r\n")
    if not text.startswith("MSH") or len(text) < 8:
        raise ParseError("HL7 v2: message must start with MSH and its encoding characters", where="line 1")
    fs = text[3]
    enc = text[4:].split(fs, 1)[0]
    if len(enc) < 4 or len(set(enc[:4] + fs)) != 5 or any(c.isalnum() or c.isspace() for c in enc[:4] + fs):
        raise ParseError(f"HL7 v2: invalid encoding characters {text[3:8]!r}", where="MSH.2")
    cs, rs, esc, ss = enc[:4]
    lines = _SEGMENTS.split(text)
    if len(lines) > MAX_SEGMENTS:
        raise ParseError(f"HL7 v2: more than {MAX_SEGMENTS} segments")
    counts: dict[str, int] = {}
    segments: list[Segment] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split(fs)
        name = fields[0]
        if not _SEGMENT_ID.match(name):
            raise ParseError("HL7 v2: not a segment (no 3-character segment id)", where=f"line {number}")
        if name == "MSH":
            if segments:
                raise ParseError("HL7 v2: second MSH segment (batches are not accepted)", where=f"line {number}")
            fields = ["MSH", fs, *fields[1:]]
        elif not segments:
            raise ParseError("HL7 v2: first segment is not MSH", where=f"line {number}")
        counts[name] = counts.get(name, 0) + 1
        segments.append(Segment(name, tuple(fields), number, counts[name]))
    return Er7(segments, fs, cs, rs, esc, ss)


# ---------------------------------------------------------------- reading LAB-3 ORU

def read_patient(msg: Er7) -> Patient:
    """PID (IHE PAM France): PID-3 INS and IPP (with its OID); PID-5 `L` (birth name: 5.1 family, 5.2 first given
    name, 5.3 all birth given names) and `D` (used name: family and used first name); PID-7 / 8; PID-11 home address
    and birth place (address type `BDL`, 11.9 = INSEE COG code, 11.3 = city), or PID-23 as the birth city."""
    pid = msg.first("PID")
    if pid is None:
        raise ParseError("HL7 v2: no PID segment", where="PID")
    pids = msg.all("PID")
    if len(pids) > 1:          # an ORU^R01 may carry several patients: one document would mix their results
        raise ParseError(f"one patient per message: the HL7 message has {len(pids)} PID segments",
                         where=pids[1].where(1))
    ins = ins_oid = local = local_oid = ""
    for rep in msg.reps(pid.get(3)):
        cx = msg.comps(rep, 5)
        authority = msg.subs(cx[3], 3)
        if cx[4] == "INS" or authority[1] in INS_OIDS:
            if not is_nir(cx[0]):
                raise ParseError("INS is not 15 characters (NIR or NIA with its key)", where=pid.where(3))
            ins, ins_oid = cx[0], authority[1]
        elif not local and cx[0]:
            local, local_oid = cx[0], authority[1] if authority[2].upper() == "ISO" else ""
    names = [msg.comps(rep, 7) for rep in msg.reps(pid.get(5))] or [[""] * 7]
    legal = next((n for n in names if n[6] == "L"), None) or next((n for n in names if n[6] == "M"), None)
    if legal is None:         # untyped: the birth name; a used name (D) or any other type never stands for it
        if names[0][6].strip():
            raise ParseError(f"PID-5 has no birth name (name type L): a name of type {names[0][6].strip()[:3]!r} "
                             "is not the patient's birth name", where=pid.where(5))
        legal = names[0]
    used = next((n for n in names if n[6] == "D"), None)
    first = legal[1].strip()
    given = birth_given_names(first, legal[2])
    sex = pid.get(8).upper()
    if sex not in ("", "M", "F", "U", "O", "A", "N"):
        raise ParseError("invalid sex (HL7 table 0001)", where=pid.where(8))
    address: tuple[str, ...] = ()
    cog = city = ""
    for rep in msg.reps(pid.get(11)):
        xad = msg.comps(rep, 9)
        if xad[6] == "BDL":
            cog, city = xad[8].strip(), xad[2].strip()
        elif not address:
            address = tuple(x.strip() for x in (xad[0], xad[1], xad[4] + " " + xad[2] if xad[4] else xad[2])
                            if x.strip())
    if cog and not re.fullmatch(r"\d[\dAB]\d{3}", cog):
        raise ParseError("birth place code (PID-11.9, address type BDL) is not an INSEE COG code", where=pid.where(11))
    return Patient(local_id=local, local_id_oid=local_oid, ins=ins, ins_oid=ins_oid, family=legal[0].strip(),
                   given=given, first_name=first, used_family=used[0].strip() if used else "",
                   used_given=used[1].strip() if used else "",
                   birth_date=norm_ts(pid.get(7), pid.where(7))[:8],
                   sex=sex if sex in ("M", "F") else "U" if sex else "", address=address, birth_place_cog=cog,
                   birth_place_city=city or msg.unescape(pid.get(23)).strip())


def _xcn(msg: Er7, value: str) -> Party:
    c = msg.comps(value, 3)
    ident = c[0][1:] if len(c[0]) == 12 and c[0].startswith("8") else c[0]
    return Party(rpps=ident if len(ident) == 11 and ident.isdigit() else "", local_code=c[0], family=c[1], given=c[2])


def _cnn(msg: Er7, value: str) -> Party:
    """OBR-32 (NDL: its first component is a CNN whose parts are sub-components `id&family&given...`)."""
    cnn = msg.subs(msg.comps(value)[0], 3)
    return _xcn(msg, msg.cs.join(msg.unescape(x) for x in cnn[:3]))


def _battery(msg: Er7, obr: Segment) -> Battery:
    code = msg.comps(obr.get(4), 6)
    if not code[0] or code[0] == "11502-2":       # no battery, or the document type itself
        return Battery()
    if is_loinc_system(code[2]) and _LOINC.match(code[0]):
        return Battery(local_code=code[3], label=code[4] or code[1], loinc=code[0], loinc_label=code[1])
    loinc = code[3] if is_loinc_system(code[5]) and _LOINC.match(code[3]) else ""
    return Battery(local_code=code[0], label=code[1], loinc=loinc, loinc_label=code[4] if loinc else "")


def is_pdf_ed(msg: Er7, value: str) -> bool:
    """OBX-5 of type ED carrying a PDF (`^application^pdf^Base64^...`, `^AP^PDF^...`)."""
    ed = msg.comps(value, 4)
    return ed[2].lower() == "pdf" or ed[1].lower() in ("application/pdf", "pdf")


def continues_ed(msg: Er7, first: Segment, seg: Segment) -> bool:
    """Whether OBX `seg` is a further part of the ED value `first` began: a document too big for one field, split
    over consecutive OBX with the same observation identifier (OBX-3) and the same, non-empty sub-id (OBX-4), as the
    HL7 rule for one observation over several OBX has it. Each part carries either the full ED
    (`^AP^PDF^Base64^<part>`) or the bare base64 part."""
    return (seg.name == "OBX" and seg.get(2) == "ED" and bool(first.get(4).strip())
            and seg.get(4).strip() == first.get(4).strip()
            and msg.comps(seg.get(3))[0] == msg.comps(first.get(3))[0])


def pdf_of_ed(msg: Er7, seg: Segment, parts: Sequence[Segment] = ()) -> bytes:
    """The PDF an OBX ED carries (OBX-5.5, base64), with the base64 of the OBX continuing it (`continues_ed`) joined
    on: a ParseError naming OBX-5 when it is not one."""
    ed = msg.comps(seg.get(5), 5)
    if ed[3].lower() != "base64":
        raise ParseError("the PDF must be base64 (OBX-5.4 Base64)", where=seg.where(5))
    data = [ed[4]]
    for part in parts:
        value = part.get(5)
        more = msg.comps(value, 5)
        if msg.cs in value and (more[3].lower() != "base64" or not is_pdf_ed(msg, value)):
            raise ParseError("a further part of the PDF must be the same ED (^AP^PDF^Base64^...) or bare base64",
                             where=part.where(5))
        data.append(more[4] if msg.cs in value else value)
    try:
        pdf = binascii.a2b_base64("".join(data).encode("ascii"))
    except (binascii.Error, ValueError, UnicodeEncodeError):
        raise ParseError("invalid base64 in OBX-5.5", where=seg.where(5)) from None
    if not pdf.startswith(b"%PDF-"):
        raise ParseError("the document in OBX-5 is not a PDF (no %PDF- signature)", where=seg.where(5))
    return pdf


def pdf_documents(msg: Er7) -> list[tuple[Segment, list[Segment]]]:
    """The OBX ED segments carrying a PDF, each with the OBX that continue it (`continues_ed`: consecutive, only
    NTE between)."""
    docs: list[tuple[Segment, list[Segment]]] = []
    previous: Segment | None = None        # the last part of the PDF being read, while only NTE follow it
    for seg in msg.segments:
        if seg.name == "NTE":
            continue
        if previous is not None and continues_ed(msg, docs[-1][0], seg):
            docs[-1][1].append(seg)
        elif seg.name == "OBX" and seg.get(2) == "ED" and is_pdf_ed(msg, seg.get(5)):
            docs.append((seg, []))
        else:
            previous = None
            continue
        previous = seg
    return docs


def read_lab_oru(msg: Er7) -> LabReport:
    """Structured ORU^R01 (LAB-3): `{OBR [NTE] {OBX [NTE]}}` after PID -> LabReport (an NTE after an OBX is on the
    result, after an OBR on the request, elsewhere on the report; an OBX ED carrying a PDF is the lab's PDF copy of
    the report, not a result). Every OBR must carry at least one OBX and every OBX its status (OBX-11, required):
    a message cut in transit is refused, never sent short."""
    patient = read_patient(msg)
    obrs = msg.all("OBR")
    if not obrs:
        raise ParseError("ORU^R01 without OBR: the message is incomplete", where="OBR")
    first = obrs[0]
    results: list[Result] = []
    comments: list[str] = []
    batteries: list[Battery] = []
    org = Party(local_code=msg.comps(msg.msh.get(4))[0])
    biologist = next((_cnn(msg, o.get(32)) for o in obrs if o.get(32)), Party())
    last = ""
    pdf = b""
    pdf_docs = {id(first_part): more for first_part, more in pdf_documents(msg)}
    pdf_parts = {id(part) for more in pdf_docs.values() for part in more}
    counts: list[int] = []
    for seg in msg.segments:
        if seg.name == "OBR":
            batteries.append(replace(_battery(msg, seg), status=request_status(seg.get(25), seg.where(25))))
            counts.append(0)
        elif seg.name == "OBX":
            if not counts:
                raise ParseError("OBX before any OBR", where=seg.where(1))
            counts[-1] += 1
            if id(seg) in pdf_parts:               # a further part of the lab's PDF (pdf_documents)
                counts[-1] -= 1
                continue
            if seg.get(2) == "ED" and is_pdf_ed(msg, seg.get(5)):     # the lab's PDF of the report: its copy
                if pdf:
                    raise ParseError("ORU^R01 with 2 PDF copies of the report: one per message (which one is the "
                                     "report's?)", where=seg.where(5))
                pdf = pdf_of_ed(msg, seg, pdf_docs.get(id(seg), ()))
                continue
            results.append(_read_obx(msg, seg, len(batteries)))
            xon = msg.comps(seg.get(23), 10)
            if xon[0] and not org.org_name:
                ident = xon[9]
                xad = msg.comps(seg.get(24), 6)
                org = Party(local_code=org.local_code, org_name=xon[0],
                            org_finess=ident[1:] if len(ident) == 10 and ident.startswith("1") else "",
                            addr=tuple(x.strip() for x in (xad[0], f"{xad[4]} {xad[2]}".strip()) if x.strip()))
        elif seg.name == "NTE":           # NTE-3 repeats (FT): one line each
            text = "\n".join(msg.unescape(r) for r in msg.reps(seg.get(3))).strip()
            if text and last == "OBX":
                r = results[-1]
                results[-1] = replace(r, comments=(*r.comments, text))
            elif text and last == "OBR":
                b = batteries[-1]
                batteries[-1] = replace(b, comments=(*b.comments, text))
            elif text:
                comments.append(text)
        if seg.name != "NTE":
            last = seg.name
    for obr, count in zip(obrs, counts):
        if not count:
            raise ParseError("OBR without any OBX: the message is incomplete (cut in transit?)", where=obr.where(1))
    if not biologist.rpps and not biologist.family:
        biologist = next((r.observer for r in results if r.observer is not None), Party())
    sender = replace(org, rpps=biologist.rpps, family=biologist.family, given=biologist.given)
    report_date = next((norm_ts(o.get(22), o.where(22)) for o in reversed(obrs) if o.get(22).strip()), "")
    return LabReport(patient=patient, sender=sender, requester=_xcn(msg, (msg.reps(first.get(16)) or [""])[0]),
                     order_id=msg.comps(first.get(2))[0], lab_file=msg.comps(first.get(3))[0],
                     collected_at=norm_ts(first.get(7), first.where(7)),
                     received_at=norm_ts(first.get(14), first.where(14)),
                     report_date=report_date or norm_ts(msg.msh.get(7), "MSH[1].7"),
                     results=tuple(results), comments=tuple(comments), status=first.get(25) or "F",
                     source="hl7_oru", batteries=tuple(batteries), pdf=pdf)


def _read_obx(msg: Er7, seg: Segment, battery: int) -> Result:
    kind = seg.get(2) or "ST"
    if kind == "ED":
        raise ParseError("ED observation in a structured ORU (CI-SIS CDA-in-HL7?)", where=seg.where(2))
    code = msg.comps(seg.get(3), 6)
    if not code[0]:
        raise ParseError("OBX without observation identifier", where=seg.where(3))
    status = seg.get(11).strip().upper()
    if not status:
        raise ParseError("OBX-11 (result status, required) is empty: the message is incomplete (cut in transit?)",
                         where=seg.where(11))
    status = result_status(status, seg.where(11))
    reps = msg.reps(seg.get(5))               # OBX-5 may repeat (two organisms, the lines of a TX): keep them all
    value = ("\n" if kind in ("TX", "FT") else ", ").join(msg.unescape(r) for r in reps)
    if kind in ("CE", "CWE"):      # what is meant: the text, else the original text (CWE-9), else the alternate's
        value = ", ".join(next((t.strip() for t in (c[1], c[8], c[4], c[0], c[3]) if t.strip()), "")
                          for c in (msg.comps(r, 9) for r in reps))
    elif kind == "SN":
        value = _sn(msg, seg)
    elif kind in _DATES and len(reps) == 1:     # a date as result (last period, onset): kept as a date when it is one
        try:
            value = norm_ts(value, seg.where(5))
        except ParseError:
            kind = "ST"
    unit = msg.comps(seg.get(6), 3)
    range_text = msg.unescape(seg.get(7)).strip()
    low, high, low_open, high_open = parse_range(range_text, (unit[0] or unit[1]).strip())
    if is_loinc_system(code[2]) and _LOINC.match(code[0]):   # LOINC first, local code as alternate
        loinc, loinc_label = code[0], code[1]
        local, label, system = (code[3], code[4] or code[1], code[5] or "L") if code[3] else ("", code[1], "")
    else:
        local, label, system = code[0], code[1], code[2]
        loinc = code[3] if is_loinc_system(code[5]) and _LOINC.match(code[3]) else ""
        loinc_label = code[4] if loinc else ""
    observer = None
    for n in (16, 25):
        if seg.get(n).strip():
            p = _xcn(msg, msg.reps(seg.get(n))[0])
            if p.rpps or p.family:
                observer = p
                break
    return Result(local_code=local, label=label, code_system=system or "L", loinc=loinc, loinc_label=loinc_label,
                  value=decimal(value) if kind in ("NM", "SN") and is_decimal(value) else value, value_type=kind,
                  unit=(unit[0] or unit[1]).strip(), range_low=low, range_high=high, range_low_open=low_open,
                  range_high_open=high_open, range_text=range_text, flags=_flags(msg, seg), status=status,
                  observed_at=norm_ts(seg.get(14), seg.where(14)), analysed_at=norm_ts(seg.get(19), seg.where(19)),
                  battery=battery, observer=observer)


_DATES = frozenset({"DT", "TS", "DTM"})


def _flags(msg: Er7, seg: Segment) -> tuple[str, ...]:
    """OBX-8 repeats (`H~A`: high, and abnormal): every flag, in order, each once (a flag written as components,
    `H^A`, is read the same: none is dropped)."""
    return distinct_flags(c for rep in msg.reps(seg.get(8)) for c in msg.comps(rep))


def _sn(msg: Er7, seg: Segment) -> str:
    """SN (structured numeric) `comparator^num1^separator^num2`: a plain number (or `=^5`) stays numeric, anything
    else (`<^3`, `^10^-^20`, `^1^:^40`) is kept as the laboratory wrote it (`<3`, `10-20`, `1:40`)."""
    c = msg.comps(seg.get(5), 4)
    if c[0].strip() in ("", "=") and not c[2] and is_decimal(c[1]):
        return c[1]
    return "".join(c).strip()


# ---------------------------------------------------------------- escaping (ER7)

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))


def esc(text: str) -> str:
    if not text:
        return ""
    for char, code in _ESCAPES:
        if char in text:
            text = text.replace(char, code)
    return text.replace("\r", " ").replace("\n", "\\.br\\")
