"""Helpers shared by the transform tests (imported by name: this folder is on sys.path under pytest's
default import mode)."""

from __future__ import annotations

import base64
import os
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"
if not SHARED.exists():
    SHARED = Path(os.environ.get("HUB_SHARED", "../shared")).resolve()
SAMPLES = SHARED / "samples"
XSD = SHARED / "schemas" / "cda" / "CDA_extended.xsd"
SCHEMATRONS = SHARED / "schematrons" / "ansforge" / "schematrons"
NOW = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)
V3 = {"h": "urn:hl7-org:v3"}

LOINC_CSV = """local_code,loinc_code,loinc_label,ucum_unit
# glucose and creatinine
GLY,14749-6,Glucose [Moles/volume] Sérum/Plasma,mmol/L
CREA,14682-9,Créatinine [Moles/volume] Sérum/Plasma,umol/L
"""


def mail(*parts: tuple[bytes, str, str], headers: str = "") -> bytes:
    """multipart/mixed message: text body + parts (payload, content type, filename), base64."""
    head = ("From: lab@labo.example.mssante.fr\r\nTo: dr.house@medecin.mssante.fr\r\nSubject: resultats\r\n"
            "Message-ID: <abc@labo.example>\r\nDate: Wed, 15 Jan 2025 10:30:00 +0100\r\nX-Hub-Secret: internal\r\n"
            f"{headers}MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BOUND\"\r\n\r\n"
            "--BOUND\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nBonjour\r\n")
    out = head.encode()
    for payload, ctype, name in parts:
        out += (f'--BOUND\r\nContent-Type: {ctype}; name="{name}"\r\nContent-Transfer-Encoding: base64\r\n'
                f'Content-Disposition: attachment; filename="{name}"\r\n\r\n').encode()
        out += base64.encodebytes(payload).replace(b"\n", b"\r\n")
    return out + b"--BOUND--\r\n"


def sample(rel: str) -> bytes:
    return (SAMPLES / rel).read_bytes()


def make_pdf(size: int = 2000) -> bytes:
    body = os.urandom(size)
    return (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n2 0 obj\n<< /Length "
            + str(len(body)).encode() + b" /Filter /FlateDecode >>\nstream\n" + body
            + b"\nendstream\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n")


CORPUS = Path(__file__).resolve().parent / "corpus"


def corpus(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def mdm_t02(pdf: bytes, *, txa2: str = "11490-0^Lettre de liaison à la sortie d'un établissement de soins^LN",
            pid: str = "") -> bytes:
    """An HL7 v2.6 MDM^T02 carrying a PDF letter (TXA + OBX ED), as a hospital's DPI sends it."""
    pid = pid or ("PID|1||185057511212345^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS~IPP-5^^^CHN&"
                  "1.2.250.1.999.88.1&ISO^PI||DUPONT-TEST^JEAN^JEAN PIERRE^^^^L~MARTIN-TEST^JP^^^^^D||19850512|M"
                  "|||^^PARIS 11E^^^^BDL^^75111")
    b64 = base64.b64encode(pdf).decode()
    return "\r".join([
        "MSH|^~\\&|DPI|CHN|HUB|REGION|20250402151500||MDM^T02^MDM_T02|MDM-1|P|2.6|||||FRA|UNICODE UTF-8",
        "EVN|T02|20250402151500",
        pid,
        "PV1|1|I|CARDIO||||||||||||||||SEJ-55^^^CHN&1.2.250.1.999.88.4&ISO^VN|||||||||||||||||||||||||"
        "20250328093000|20250402110000",
        f"TXA|1|{txa2}|AP|20250402143000|10101234567^CARDIO^Pierre|20250402151200||||||DOC-991^^1.2.250.1.999.88.2"
        "^ISO|||||AU|N",
        f"OBX|1|ED|11490-0^Lettre de liaison^LN||^application^pdf^Base64^{b64}||||||F",
    ]).encode("utf-8") + b"\r"


def cdas(message: bytes) -> list[bytes]:
    """The CDAs of an outgoing message's IHE_XDM.zip, in order."""
    import io
    import zipfile
    from email import message_from_bytes, policy

    msg = message_from_bytes(message, policy=policy.default)
    for part in msg.iter_attachments():
        if part.get_filename() == "IHE_XDM.zip":
            z = zipfile.ZipFile(io.BytesIO(part.get_content()))
            return [z.read(n) for n in sorted(z.namelist()) if n.startswith("IHE_XDM/SUBSET01/DOC")]
    return []


MUTATIONS = ("remove element", "rename element", "wrong code", "wrong OID", "remove templateId", "empty attribute",
             "remove attribute", "empty text", "duplicate element", "add nullFlavor")


def mutate(doc: bytes, seed: int, kind: str) -> bytes:
    """One deterministic defect of `kind` (MUTATIONS) in a copy of a CDA, at an element drawn with `seed`: what a
    sender's software or a hand edit gets wrong (elements removed or renamed, codes and OIDs changed, templateIds
    missing, attributes emptied...). The document stays well-formed."""
    import random

    from lxml import etree

    rng = random.Random(seed)
    root = etree.fromstring(doc)
    els = [e for e in root.iter() if isinstance(e.tag, str) and e is not root]

    def pick(cond=lambda e: True):
        found = [e for e in els if cond(e)]
        return rng.choice(found) if found else rng.choice(els)

    if kind == "remove element":
        el = pick()
        el.getparent().remove(el)
    elif kind == "rename element":
        el = pick()
        el.tag = etree.QName(el).namespace and f"{{{etree.QName(el).namespace}}}{etree.QName(el).localname}X" or "X"
    elif kind == "wrong code":
        pick(lambda e: e.get("code") is not None).set("code", rng.choice(["XXXX", "12345-6", "N", "0"]))
    elif kind == "wrong OID":
        pick(lambda e: e.get("root") is not None or e.get("codeSystem") is not None).set(
            "root" if rng.random() < 0.6 else "codeSystem", rng.choice(["1.2.3.4.5", "1..2", "2.16.840.1.113883.6.1"]))
    elif kind == "remove templateId":
        el = pick(lambda e: etree.QName(e).localname == "templateId")
        el.getparent().remove(el)
    elif kind in ("empty attribute", "remove attribute"):
        el = pick(lambda e: bool(e.attrib))
        if el.attrib:
            name = rng.choice(sorted(el.attrib))
            if kind == "empty attribute":
                el.set(name, "")
            else:
                del el.attrib[name]
    elif kind == "empty text":
        pick(lambda e: bool((e.text or "").strip())).text = ""
    elif kind == "duplicate element":
        import copy

        el = pick()
        el.addnext(copy.deepcopy(el))
    elif kind == "add nullFlavor":
        pick().set("nullFlavor", rng.choice(["UNK", "NI", "OTH"]))
    else:
        raise ValueError(kind)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")
