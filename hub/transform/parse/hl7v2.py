"""HL7 v2 (ER7) reading: a small strict parser, the LAB-3 ORU^R01 reader, and ER7 escaping.

Input: untrusted bytes, segments separated by CR, CRLF or LF (the ANS samples use LF), delimiters read from MSH.
`parse_er7` raises `ParseError` with `where` like "line 3" or "OBX[2].5". `read_lab_oru` turns a structured
LAB-3 ORU^R01 (one OBX per analyte) into a `LabReport`; `hub.transform.build.oru.write_oru` does the reverse.
Reads no settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from hub.errors import ParseError
from hub.transform.terminology.dates import decimal, decode_text, is_decimal, norm_ts, split_range
from hub.transform.model import INS_OIDS, LabReport, Party, Patient, Result, is_nir

_SEGMENTS = re.compile(r"\r\n|\r|\n")
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{2}$")
MAX_SEGMENTS = 100_000


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

    @property
    def msh(self) -> Segment:
        return self.segments[0]

    def all(self, name: str) -> list[Segment]:
        return [s for s in self.segments if s.name == name]

    def first(self, name: str) -> Segment | None:
        return next((s for s in self.segments if s.name == name), None)

    def unescape(self, text: str) -> str:
        e = self.esc
        if not e or e not in text:
            return text
        for code, char in (("F", self.fs), ("S", self.cs), ("R", self.rs), ("T", self.ss), ("E", e)):
            text = text.replace(f"{e}{code}{e}", char)
        return text.replace(f"{e}.br{e}", "\n")

    def reps(self, value: str) -> list[str]:
        return value.split(self.rs) if value else []

    def comps(self, value: str, n: int = 0) -> list[str]:
        c = [self.unescape(x) for x in value.split(self.cs)]
        return c + [""] * (n - len(c))

    def subs(self, value: str, n: int = 0) -> list[str]:
        c = value.split(self.ss)
        return c + [""] * (n - len(c))


def parse_er7(data: bytes) -> Er7:
    if not isinstance(data, (bytes, bytearray)):
        raise ParseError("HL7 v2: expected bytes")
    text = decode_text(bytes(data)).lstrip("\x0b").rstrip("\x1c\r\n")
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
            raise ParseError(f"HL7 v2: not a segment: {line[:20]!r}", where=f"line {number}")
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
    pid = msg.first("PID")
    if pid is None:
        raise ParseError("HL7 v2: no PID segment", where="PID")
    ins = ins_oid = local = ""
    for rep in msg.reps(pid.get(3)):
        cx = msg.comps(rep, 5)
        authority = msg.subs(cx[3], 2)
        if cx[4] == "INS" or authority[1] in INS_OIDS:
            if not is_nir(cx[0]):
                raise ParseError(f"INS {cx[0]!r} is not 15 characters", where=pid.where(3))
            ins, ins_oid = cx[0], authority[1]
        elif not local:
            local = cx[0]
    names = [msg.comps(rep, 7) for rep in msg.reps(pid.get(5))] or [[""] * 7]
    name = next((n for n in names if n[6] == "L"), names[0])
    used = next((n for n in names if n[6] == "D"), name)
    sex = pid.get(8).upper()
    if sex not in ("", "M", "F", "U", "O", "A", "N"):
        raise ParseError(f"invalid sex {sex!r}", where=pid.where(8))
    return Patient(local_id=local, ins=ins, ins_oid=ins_oid, family=name[0], given=name[1], used_family=used[0],
                   birth_date=norm_ts(pid.get(7), pid.where(7))[:8], sex=sex if sex in ("M", "F") else "U" if sex else "")


def _xcn(msg: Er7, value: str) -> Party:
    c = msg.comps(value, 3)
    ident = c[0][1:] if len(c[0]) == 12 and c[0].startswith("8") else c[0]
    return Party(rpps=ident if len(ident) == 11 and ident.isdigit() else "", local_code=c[0], family=c[1], given=c[2])


def read_lab_oru(msg: Er7) -> LabReport:
    """Structured ORU^R01 (LAB-3): one OBX per analyte -> LabReport."""
    patient = read_patient(msg)
    obr = msg.first("OBR")
    if obr is None:
        raise ParseError("ORU^R01 without OBR", where="OBR")
    results: list[Result] = []
    comments: list[str] = []
    org = Party(local_code=msg.comps(msg.msh.get(4))[0])
    biologist = Party()
    if obr.get(32):
        cnn = msg.subs(msg.comps(obr.get(32))[0], 3)
        biologist = _xcn(msg, msg.cs.join(cnn[:3]))
    last = ""
    for seg in msg.segments:
        if seg.name == "OBX":
            results.append(_read_obx(msg, seg))
            xon = msg.comps(seg.get(23), 10)
            if xon[0] and not org.org_name:
                ident = xon[9]
                org = Party(local_code=org.local_code, org_name=xon[0],
                            org_finess=ident[1:] if len(ident) == 10 and ident.startswith("1") else "")
        elif seg.name == "NTE":
            text = msg.unescape(seg.get(3)).strip()
            if text and last == "OBX":
                r = results[-1]
                results[-1] = replace(r, comments=(*r.comments, text))
            elif text:
                comments.append(text)
        if seg.name != "NTE":
            last = seg.name
    if not results:
        raise ParseError("ORU^R01 without OBX", where="OBX")
    sender = Party(rpps=biologist.rpps, family=biologist.family, given=biologist.given,
                   local_code=org.local_code, org_finess=org.org_finess, org_name=org.org_name)
    return LabReport(patient=patient, sender=sender, requester=_xcn(msg, (msg.reps(obr.get(16)) or [""])[0]),
                     order_id=msg.comps(obr.get(2))[0], lab_file=msg.comps(obr.get(3))[0],
                     collected_at=norm_ts(obr.get(7), obr.where(7)), received_at=norm_ts(obr.get(14), obr.where(14)),
                     report_date=norm_ts(obr.get(22), obr.where(22)) or norm_ts(msg.msh.get(7), "MSH[1].7"),
                     results=tuple(results), comments=tuple(comments), status=obr.get(25) or "F", source="hl7_oru")


def _read_obx(msg: Er7, seg: Segment) -> Result:
    kind = seg.get(2) or "ST"
    if kind == "ED":
        raise ParseError("ED observation in a structured ORU (CI-SIS CDA-in-HL7?)", where=seg.where(2))
    code = msg.comps(seg.get(3), 3)
    if not code[0]:
        raise ParseError("OBX without observation identifier", where=seg.where(3))
    value = msg.unescape(seg.get(5))
    if kind in ("CE", "CWE"):
        c = msg.comps(seg.get(5), 2)
        value = c[1] or c[0]
    unit = msg.comps(seg.get(6), 3)
    range_text = msg.unescape(seg.get(7))
    low, high = split_range(range_text)
    loinc = code[0] if code[2] == "LN" else ""
    alt = msg.comps(seg.get(3), 6)
    if not loinc and alt[5] == "LN":
        loinc = alt[3]
    local, label, system = (alt[3], alt[4] or code[1], alt[5]) if code[2] == "LN" and alt[3] else code
    return Result(local_code=local, label=label, code_system=system or "L", loinc=loinc,
                  loinc_label=code[1] if loinc == code[0] else alt[4], value=decimal(value)
                  if kind == "NM" and is_decimal(value) else value, value_type=kind, unit=unit[0],
                  ucum=unit[0] if unit[2] in ("UCUM", "ISO+") else "", range_low=low, range_high=high,
                  range_text=range_text, flag=msg.comps(seg.get(8))[0], status=seg.get(11) or "F",
                  observed_at=norm_ts(seg.get(14), seg.where(14)))


# ---------------------------------------------------------------- escaping (ER7)

_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("~", "\\R\\"), ("&", "\\T\\"))


def esc(text: str) -> str:
    if not text:
        return ""
    for char, code in _ESCAPES:
        if char in text:
            text = text.replace(char, code)
    return text.replace("\r", " ").replace("\n", "\\.br\\")
