"""Helpers shared by the transform tests (imported by name: this folder is on sys.path under pytest's
default import mode)."""

from __future__ import annotations

import base64
import os
import re
import zlib
from datetime import datetime, timezone
from pathlib import Path

from lxml import etree

REPO = Path(__file__).resolve().parents[3]
SHARED = REPO.parent / "shared"
if not SHARED.exists():
    SHARED = Path(os.environ.get("HUB_SHARED", "../shared")).resolve()
SAMPLES = SHARED / "samples"
XSD = SHARED / "schemas" / "cda" / "CDA_extended.xsd"
SCHEMATRONS = SHARED / "schematrons" / "ansforge" / "schematrons"
NOW = datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)
V3 = {"h": "urn:hl7-org:v3"}
NS = {**V3, "lab": "urn:oid:1.3.6.1.4.1.19376.1.3.2"}

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


# ------------------------------------------------------------------ laboratory "Kappa" (HL7 v2.5.1 LAB-3)

OBR32 = "|||||||10101234567&BIOLOGISTE&Claire"


def kappa(obr1: str = "F", obr2: str = "F", *, obx: dict[str, str] | None = None) -> bytes:
    """An HL7 v2.5.1 ORU^R01 (LAB-3) of two batteries; `obx` replaces an OBX by its LOINC code (its fields after
    OBX-3, from OBX-4 on)."""
    rows = {
        "2345-7": "|0,98|g/L|0,70-1,10|N|||F|||20250402073000+0200",
        "2823-3": "|4.1|mmol/L|3.5-5.0|N|||F|||20250402073000+0200",
        "6690-2": "|7.2|G/L|4.0-10.0|N|||F|||20250402073000+0200",
        "777-3": "|245|G/L|150-400|N|||F|||20250402073000+0200",
    }
    rows.update(obx or {})
    labels = {"2345-7": "Glucose", "2823-3": "Potassium", "6690-2": "Leucocytes", "777-3": "Plaquettes"}

    def line(n: int, code: str) -> str:          # NM for a number, else ST (a lab's text, or no value yet)
        kind = "NM" if re.fullmatch(r"[\d.,]+", rows[code].split("|")[1]) else "ST"
        return f"OBX|{n}|{kind}|{code}^{labels[code]}^LN|{rows[code]}"
    return "\r".join([
        "MSH|^~\\&|SIL-K|LABK|HUB|REGION|20250402101500||ORU^R01^ORU_R01|K-1|P|2.5.1|||||FRA|UNICODE UTF-8",
        "PID|1||295076912345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS~IPK-1^^^LABK&1.2.250.1.999.66.1&"
        "ISO^PI||LEFEBVRE-ESSAI^CAMILLE^CAMILLE ROSE^^^^L||19950714|F|||^^LYON^^^^BDL^^69123",
        "OBR|1|CMD-K1|LAB-K1|24326-1^Bilan métabolique^LN|||20250402073000+0200|||||||20250402080000+0200||"
        f"10003456789^PRESCRIPTEUR^Anne||||||20250402101000+0200|||{obr1}{OBR32}",
        line(1, "2345-7"), line(2, "2823-3"),
        "OBR|2|CMD-K1|LAB-K1|58410-2^NFS^LN|||20250402073000+0200|||||||20250402080000+0200||"
        f"10003456789^PRESCRIPTEUR^Anne||||||20250402101000+0200|||{obr2}{OBR32}",
        line(1, "6690-2"), line(2, "777-3"), ""]).encode("utf-8")


def convert(conformant, data: bytes, chain: str = "hl7_oru_to_cda_xdm", account: str = "labo-alpha"):
    """The CDA (root element) and the outcome; the `conformant` registry raises on any failed ANS assertion."""
    out = conformant.apply(chain, mail((data, "text/plain" if chain == "hprim_to_cda_xdm" else "application/hl7-v2",
                                        "r.txt")), {"now": NOW}, account=account)
    assert next(s for s in out.steps if s.name == "cda_schematron").validation == "conformant (5 schematrons)"
    [doc] = cdas(out.message)
    return etree.fromstring(doc), out


def narrative(root) -> str:
    return etree.tostring(root.find(".//h:section/h:component/h:section/h:text", NS), encoding="unicode",
                          method="text")


def pdf_copy(root) -> str:
    """The text drawn on the pages of the CDA's PDF copy (the hub's rendering: Flate streams, latin-1 strings)."""
    pdf = base64.b64decode(root.find(".//h:observationMedia/h:value", NS).text)
    streams = (m.group(1) for m in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S))
    return "".join(zlib.decompressobj().decompress(s).decode("latin-1") for s in streams if s.startswith(b"x"))
