"""HL7 v2.5 ORU^R01 writer: a `LabReport` (from HPRIM Santé / HPRIM Net) as one ORU^R01, one OBX per result
(LOINC in OBX-3 when mapped, the local code as alternate). The CR-BIO builder reads it back with
`hub.transform.parse.hl7v2.read_lab_oru`, so every lab input reaches the CDA through the same reader.
Reads no settings.
"""

from __future__ import annotations

from hub.transform.model import LabReport
from hub.transform.parse.hl7v2 import esc
from hub.transform.terminology.dates import is_decimal


def write_oru(report: LabReport, *, control_id: str, now: str, sending_app: str = "HUB") -> bytes:
    """ORU^R01 v2.5, one OBX per result (LOINC in OBX-3 when mapped, local code as alternate)."""
    p = report.patient
    pid3 = []
    if p.ins:
        authority = "ASIP-SANTE-INS-NIR" if p.ins[0] in "12" else "ASIP-SANTE-INS-NIA"
        pid3.append(f"{esc(p.ins)}^^^{authority}&{p.ins_oid}&ISO^INS" if p.ins_oid else f"{esc(p.ins)}^^^^NH")
    if p.local_id:
        pid3.append(f"{esc(p.local_id)}^^^{esc(report.sender.local_code)}^PI")
    s, r = report.sender, report.requester
    lines = [
        f"MSH|^~\\&|{esc(sending_app)}|{esc(s.local_code)}|{esc(report.receiver.local_code)}||{now}||"
        f"ORU^R01^ORU_R01|{esc(control_id)}|P|2.5|||||FRA|UNICODE UTF-8",
        f"PID|1||{'~'.join(pid3)}||{esc(p.family)}^{esc(p.given)}^^^^^L"
        + (f"~{esc(p.used_family)}^{esc(p.given)}^^^^^D" if p.used_family and p.used_family != p.family else "")
        + f"||{p.birth_date}|{p.sex}",
        f"ORC|RE|{esc(report.order_id)}|{esc(report.lab_file)}",
    ]
    requester = f"{'8' + r.rpps if r.rpps else esc(r.local_code)}^{esc(r.family)}^{esc(r.given)}" if (
        r.rpps or r.local_code or r.family) else ""
    interpreter = ""
    if s.rpps or s.family:
        interpreter = (f"{'8' + s.rpps if s.rpps else ''}&{esc(s.family)}&{esc(s.given)}"
                       + ("&&&&&&ASIP-SANTE-PS&1.2.250.1.71.4.2.1&ISO" if s.rpps else ""))
    obr = ["OBR", "1", esc(report.order_id), esc(report.lab_file), "11502-2^CR d'examens biologiques^LN", "", "",
           report.collected_at, "", "", "", "", "", "", report.received_at, "", requester, "", "", "", "", "",
           report.report_date, "", "", report.status or "F", "", "", "", "", "", "", interpreter]
    lines.append("|".join(obr).rstrip("|"))
    for k, note in enumerate(report.comments, 1):
        lines.append(f"NTE|{k}|L|{esc(note)}")
    xon = ""
    if s.org_name or s.org_finess:
        xon = esc(s.org_name) + (f"^^^^^ASIP-SANTE-ST&1.2.250.1.71.4.2.2&ISO^FINEG^^^1{s.org_finess}"
                                 if s.org_finess else "")
    for n, res in enumerate(report.results, 1):
        if res.loinc:
            code = f"{esc(res.loinc)}^{esc(res.loinc_label or res.label)}^LN^{esc(res.local_code)}^{esc(res.label)}^L"
        else:
            code = f"{esc(res.local_code)}^{esc(res.label)}^{esc(res.code_system or 'L')}"
        unit = f"{esc(res.ucum)}^^UCUM" if res.ucum else esc(res.unit)
        rng = f"{res.range_low}-{res.range_high}" if res.range_low and res.range_high else esc(res.range_text)
        kind = res.value_type if res.value_type in ("NM", "ST", "TX", "CE", "SN") else "ST"
        if kind == "NM" and not is_decimal(res.value):
            kind = "ST"
        value = f"^{esc(res.value)}" if kind == "CE" else esc(res.value)
        obx = ["OBX", str(n), kind, code, "", value, unit, rng, esc(res.flag), "", "", res.status or "F", "", "",
               res.observed_at, "", "", "", "", "", "", "", "", xon]
        lines.append("|".join(obx).rstrip("|"))
        for k, note in enumerate(res.comments, 1):
            lines.append(f"NTE|{k}|L|{esc(note)}")
    return ("\r".join(lines) + "\r").encode("utf-8")
