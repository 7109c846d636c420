"""MSSanté message rules (MSSANTE.md §3.1-3.3): X-MSS-CODECDA, X-MSS-INS, X-MSS-NIL, the `XDM/1.0/DDM+` subject, and
the outgoing message (original routing headers + text body + IHE_XDM.zip + optional PDF).

Pure functions over `CdaInfo` values already read from validated CDAs. The NIL value ("référence produit") comes
from the caller (setting `hub.nil`).
"""

from __future__ import annotations

from email.message import EmailMessage

from hub.transform.parse.cda_info import CdaInfo
from hub.transform.parse.mime import Attachment, build_message

SUBJECT_PREFIX = "XDM/1.0/DDM+"
XDM_FILENAME = "IHE_XDM.zip"


def codecda(infos: list[CdaInfo]) -> str:
    """Document type codes, comma separated, in document order, without repeats."""
    seen: list[str] = []
    for info in infos:
        if info.code not in seen:
            seen.append(info.code)
    return ",".join(seen)


def ins_flag(infos: list[CdaInfo]) -> str:
    """'O' when every CDA carries a qualified INS (number + OID + birth name, first given, birth date, sex)."""
    return "O" if infos and all(i.patient.qualified_ins for i in infos) else "N"


def mss_headers(infos: list[CdaInfo], nil: str) -> list[tuple[str, str]]:
    """X-MSS-CODECDA and X-MSS-INS only when CDAs are carried in an XDM; X-MSS-NIL always."""
    headers = [("X-MSS-CODECDA", codecda(infos)), ("X-MSS-INS", ins_flag(infos))] if infos else []
    return headers + [("X-MSS-NIL", nil)]


def _ddmmyyyy(date: str) -> str:
    return f"{date[6:8]}/{date[4:6]}/{date[:4]}" if len(date) >= 8 else ""


def subject(info: CdaInfo, title: str | None = None) -> str:
    """`XDM/1.0/DDM+<title> <NOM> <prénom> <dd/mm/yyyy>` (no INS in the subject)."""
    p = info.patient
    words = [title or info.title, p.family.upper(), p.first_given, _ddmmyyyy(p.birth_date)]
    return SUBJECT_PREFIX + " ".join(w for w in words if w)


def outgoing(original: EmailMessage | None, infos: list[CdaInfo], xdm: bytes, *, nil: str, body_text: str,
             pdf: bytes | None = None, pdf_name: str = "document.pdf", pdf_lines: bytes | memoryview | None = None,
             to: list[str] | None = None) -> bytes:
    """pdf_lines: the PDF already base64-encoded in MIME lines (`mime.encode_lines(pdf)`), when the caller has it."""
    attachments = [Attachment(XDM_FILENAME, "application/zip", xdm)]
    if pdf:
        attachments.append(Attachment(pdf_name, "application/pdf", pdf, pdf_lines or b""))
    return build_message(original, subject=subject(infos[0]), extra_headers=mss_headers(infos, nil),
                         body_text=body_text, attachments=attachments, to=to)
