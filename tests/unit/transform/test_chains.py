"""Every chain end to end on the shared samples: produced CDAs validate against CDA_extended.xsd, the XDM reads back
with matching hash and size, and the values that matter (INS + OID, RPPS, LOINC, UCUM, ranges, time zones) are right."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from email import message_from_bytes, policy

import pytest
from lxml import etree
from tx_support import NOW, V3, make_pdf, mail, sample

from hub.errors import ParseError, TransformError
from hub.settings import TransformSection
from hub.transform import build_registry, detect
from hub.transform.build.xdm import read_xdm
from hub.transform.validate.xmlsafe import SafeXml

PARAMS = {"now": NOW}
QUALIFIED = {"patient_ins": "279035121518989", "patient_ins_oid": "1.2.250.1.213.1.4.10",
             "author_rpps": "01234567897", "author_family": "BIOLO", "author_given": "Anne",
             "org_finess": "690000001", "org_name": "LABORATOIRE EXEMPLE LYON"}


def unpack(message: bytes, schema) -> tuple:
    """Outgoing message -> (email message, XDM content, [CDA roots]); every CDA validated."""
    msg = message_from_bytes(message, policy=policy.default)
    atts = {p.get_filename(): p for p in msg.iter_attachments()}
    assert atts["IHE_XDM.zip"].get_content_type() == "application/zip"
    xdm = read_xdm(atts["IHE_XDM.zip"].get_content(), max_entries=100, max_expanded=10**8, xml=SafeXml())
    names = set(xdm.names)
    assert {"README.TXT", "INDEX.HTM", "IHE_XDM/SUBSET01/METADATA.XML"} <= names
    roots = []
    for doc in xdm.documents:
        assert doc.path.startswith("IHE_XDM/SUBSET01/DOC") and doc.path.endswith(".XML")
        root = etree.fromstring(doc.data)
        schema.assertValid(root)
        roots.append(root)
    meta = etree.fromstring(xdm.metadata)
    for doc in xdm.documents:
        slots = {s.get("name"): s.findtext(".//{*}Value") for s in meta.iter("{*}Slot")}
        assert slots["hash"] == hashlib.sha1(doc.data).hexdigest() and slots["size"] == str(len(doc.data))
    return msg, xdm, roots, meta


def obs(root) -> dict:
    found = root.xpath(".//h:observation[h:templateId/@root='1.3.6.1.4.1.19376.1.3.1.6']", namespaces=V3)
    out = {}
    for o in found:
        code = o.find("h:code", V3)
        out[code.get("code") or code.find("h:translation", V3).get("code")] = o
    return out


def test_hprim_sante_to_cda_xdm(registry, schema):
    message = mail((sample("hprim/synthetic_hprim_sante_2.2_ORU.hpr"), "text/plain", "res.hpr"),
                   headers="X-Hub-Patient-INS: 280026912345678\r\nX-Hub-Patient-INS-OID: 1.2.250.1.213.1.4.10\r\n"
                           "X-Hub-Author-RPPS: 801234567897\r\nX-Hub-Org-FINESS: 690000001\r\n")
    out = registry.apply("hprim_to_cda_xdm", message, PARAMS)
    assert [s.name for s in out.steps] == ["report_to_pdf", "hprim_sante_to_cda_n3", "cda_to_xdm", "mss_message"]
    assert out.steps[1].validation == "valid"
    assert out.patient_ins == "280026912345678" and out.patient_ins_oid == "1.2.250.1.213.1.4.10"
    assert out.doc_codes == ["11502-2"] and out.warnings == [
        "no name for the validating biologist: sent as nullFlavor UNK",
        "INS without the birth place (COG code): birth place sent as nullFlavor UNK"]
    msg, xdm, [cda], meta = unpack(out.message, schema)
    assert msg["X-MSS-CODECDA"] == "11502-2" and msg["X-MSS-INS"] == "O" and msg["X-MSS-NIL"] == "TESTNIL"
    assert msg["Subject"] == "XDM/1.0/DDM+Compte rendu d'examens biologiques NAISSANCE MARIE 14/02/1980"
    assert msg["Message-ID"] == "<abc@labo.example>" and msg["To"] == "dr.house@medecin.mssante.fr"
    assert msg["X-Hub-Secret"] is None and msg["X-Hub-Patient-INS"] is None
    assert cda.findtext("h:title", namespaces=V3) == "Compte rendu d'examens biologiques"
    assert {t.get("root") for t in cda.iterfind("h:templateId", V3)} >= {
        "2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1", "1.3.6.1.4.1.19376.1.3.3", "1.2.250.1.213.1.1.1.55"}
    pid = cda.find("h:recordTarget/h:patientRole/h:id", V3)
    assert (pid.get("root"), pid.get("extension")) == ("1.2.250.1.213.1.4.10", "280026912345678")
    author = cda.find("h:author/h:assignedAuthor", V3)
    assert author.find("h:id", V3).get("extension") == "801234567897"
    assert author.find("h:representedOrganization/h:id", V3).get("extension") == "1690000001"
    results = obs(cda)
    gly, crea = results["14749-6"], results["14682-9"]
    assert gly.find("h:value", V3).attrib == {"{http://www.w3.org/2001/XMLSchema-instance}type": "PQ",
                                              "value": "5.40", "unit": "mmol/L"}
    assert gly.find("h:effectiveTime", V3).get("value") == "20250115100000+0100"
    low = gly.find("h:referenceRange/h:observationRange/h:value/h:low", V3)
    assert (low.get("value"), low.get("unit")) == ("4.10", "mmol/L")
    assert crea.find("h:interpretationCode", V3).get("code") == "H"
    assert crea.find("h:value", V3).get("unit") == "umol/L"
    assert cda.find("h:effectiveTime", V3).get("value") == "20250115113000+0100"
    patient_id = meta.find(".//{*}ExternalIdentifier[@identificationScheme="
                           "'urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427']")
    assert patient_id.get("value") == "280026912345678^^^&1.2.250.1.213.1.4.10&ISO^NH"
    assert meta.find(".//{*}Association").get("associationType").endswith(":HasMember")


def test_hprim_net_with_pdf_rendering_and_unmapped_codes(settings, schema):
    registry = build_registry(TransformSection(cda_schema=settings.cda_schema), "NIL")   # no LOINC map
    pdf = make_pdf()
    message = mail((sample("hprim/synthetic_hprim_net_biologie.txt"), "text/plain", "res.txt"),
                   (pdf, "application/pdf", "cr.pdf"))
    out = registry.apply("hprim_to_cda_xdm", message, PARAMS)
    assert any("unmapped local code 'GLY'" in w for w in out.warnings)
    assert any("no qualified INS" in w for w in out.warnings)
    msg, _, [cda], _ = unpack(out.message, schema)
    assert msg["X-MSS-INS"] == "N"
    assert [p.get_filename() for p in msg.iter_attachments()] == ["IHE_XDM.zip", "cr.pdf"]
    code = cda.find(".//h:observation/h:code", V3)
    assert code.get("nullFlavor") == "OTH" and code.get("code") is None
    local = code.find("h:translation", V3)
    assert (local.get("code"), local.get("codeSystem")) == ("GLY", "1.2.250.1.999.1.4")
    media = cda.find(".//h:observationMedia/h:value", V3)
    assert media.get("mediaType") == "application/pdf"
    [section] = cda.xpath(".//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.243']", namespaces=V3)
    assert section.find("h:code", V3).get("code") == "55108-5"


def test_hl7_lab3_oru_to_cda(registry, schema):
    oru = (b"MSH|^~\\&|SIL|LAB|HUB|X|20250115103000||ORU^R01^ORU_R01|77|P|2.5.1\n"
           b"PID|1||279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||PAT-TROIS^DOMINIQUE^^^^^L"
           b"||19790328|F\n"
           b"OBR|1|A1|F1|24326-1^Panel^LN|||20250115074500+0100|||||||20250115083000||810002422979^CHARLES^Pascal"
           b"||||||20250115103000|||F|||||||801234534765&CAMPARINI&Marcel\n"
           b"OBX|1|NM|3016-3^TSH^LN||1,950|m[IU]/L^^UCUM|0.270-4.200|N|||F|||20250115090000+0100|||||||||"
           b"Laboratoire des charmes^^^^^ASIP-SANTE-ST&1.2.250.1.71.4.2.2&ISO^FINEG^^^1120459876\n"
           b"NTE|1|L|controle\n"
           b"OBX|2|ST|XYZ^Aspect^L||limpide||||||F\n")
    out = registry.apply("hl7_oru_to_cda_xdm", mail((oru, "application/hl7-v2", "r.hl7")), PARAMS)
    assert out.patient_ins == "279035121518989"
    _, _, [cda], _ = unpack(out.message, schema)
    assert cda.find("h:author/h:assignedAuthor/h:id", V3).get("extension") == "801234534765"
    assert cda.find(".//h:representedOrganization/h:id", V3).get("extension") == "1120459876"
    tsh = obs(cda)["3016-3"]
    assert tsh.find("h:value", V3).get("value") == "1.950"
    assert tsh.find("h:effectiveTime", V3).get("value") == "20250115090000+0100"
    assert tsh.find("h:referenceRange//h:high", V3).get("value") == "4.200"
    assert obs(cda)["XYZ"].find("h:value", V3).text == "limpide"
    assert cda.find("h:participant[@typeCode='REF']/h:associatedEntity/h:id", V3).get("extension") == "810002422979"


def test_cisis_segur_to_xdm(registry, schema):
    out = registry.apply("cisis_hl7_to_xdm",
                         mail((sample("hl7v2/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7"), "application/hl7-v2", "m.hl7")),
                         PARAMS)
    assert out.recipients == ["adam.hoda@test-ci-sis.mssante.fr", "27707279035121518989@patient.mssante.fr"]
    assert out.ack.split(b"\r")[1] == b"MSA|AA|015"
    assert out.steps[0].validation == "valid"
    msg, xdm, [cda], _ = unpack(out.message, schema)
    assert "adam.hoda@test-ci-sis.mssante.fr" in msg["To"]
    assert msg["X-MSS-INS"] == "O" and msg["X-MSS-CODECDA"] == "11502-2"
    assert xdm.documents[0].patient_id == "279035121518989^^^&1.2.250.1.213.1.4.10&ISO^NH"


def test_cisis_placeholder_cda_is_refused_precisely(registry):
    message = mail((sample("hl7v2/message_ORU_CR_Bio_INIT_N1_N3.hl7"), "application/hl7-v2", "m.hl7"))
    with pytest.raises(ParseError) as info:
        registry.apply("cisis_hl7_to_xdm", message, PARAMS)
    assert "OBX[1].5" in str(info.value)


@pytest.mark.parametrize("name, code, level", [
    ("BIO-CR-BIO_2024.01_TSH_1.xml", "11502-2", 3), ("LDL-SES_2022.01.xml", "11490-0", 3),
    ("BIO-CR-BIO_2021.01_CDA-R2-Niveau-1.xml", "11502-2", 1), ("DOC_NON_STRUCTURE_CDA-R2-N1.xml", "11502-2", 1)])
def test_cda_samples_to_xdm_and_mss_headers(registry, schema, name, code, level):
    message = mail((sample(f"cda/{name}"), "text/xml", "doc.xml"))
    assert (detect(message).kind, detect(message).doc_code, detect(message).primary.level) == ("cda", code, level)
    out = registry.apply("cda_to_xdm", message, PARAMS)
    msg, xdm, [cda], meta = unpack(out.message, schema)
    assert xdm.documents[0].type_code == code and msg["X-MSS-CODECDA"] == code
    fmt = meta.find(".//{*}Classification[@classificationScheme='urn:uuid:a09d5840-386c-46f2-b5ad-9c3699a4309d']")
    expected = {1: "urn:ihe:iti:xds-sd:pdf:2008", 3: "urn:ihe:lab:xd-lab:2008" if code == "11502-2"
                else "urn:asip:ci-sis:ldl-ses:2017"}[level]
    assert fmt.get("nodeRepresentation") == expected
    # mss_headers recomputes from the XDM and replaces existing values
    stale = out.message.replace(b"X-MSS-INS: O", b"X-MSS-INS: N")
    again = registry.apply("mss_headers", stale, PARAMS)
    headers = message_from_bytes(again.message, policy=policy.default)
    assert headers.get_all("X-MSS-INS") == ["O"] and headers["X-MSS-NIL"] == "TESTNIL"


def test_pdf_to_n1_with_headers(registry, schema):
    pdf = make_pdf(5000)
    headers = "".join(f"{k}: {v}\r\n" for k, v in {
        "X-Hub-Patient-INS": "279035121518989", "X-Hub-Patient-INS-OID": "1.2.250.1.213.1.4.10",
        "X-Hub-Patient-Family": "Pat-Trois", "X-Hub-Patient-Given": "DOMINIQUE MARIE",
        "X-Hub-Patient-Birth-Date": "19790328", "X-Hub-Patient-Sex": "F", "X-Hub-Author-RPPS": "801234567897",
        "X-Hub-Author-Family": "MEDECIN", "X-Hub-Author-Given": "Paul", "X-Hub-Org-FINESS": "1750803447",
        "X-Hub-Org-Name": "CH Exemple"}.items())
    out = registry.apply("pdf_to_cda_n1_xdm", mail((pdf, "application/pdf", "lettre.pdf"), headers=headers), PARAMS)
    msg, xdm, [cda], _ = unpack(out.message, schema)
    assert msg["X-MSS-INS"] == "O" and msg["X-MSS-CODECDA"] == "11490-0"
    assert msg["Subject"] == ("XDM/1.0/DDM+Lettre de liaison à la sortie d'un établissement de soins PAT-TROIS "
                              "DOMINIQUE 28/03/1979")
    assert {t.get("root") for t in cda.iterfind("h:templateId", V3)} == {
        "2.16.840.1.113883.2.8.2.1", "1.2.250.1.213.1.1.1.1", "1.3.6.1.4.1.19376.1.2.20"}
    text = cda.find("h:component/h:nonXMLBody/h:text", V3)
    assert text.get("mediaType") == "application/pdf"
    import base64
    assert base64.b64decode(text.text) == pdf
    names = cda.find("h:recordTarget/h:patientRole/h:patient/h:name", V3)
    assert [g.text for g in names.iterfind("h:given", V3)] == ["DOMINIQUE MARIE", "DOMINIQUE"]
    assert msg.get_payload()[2].get_content() == pdf


PDF_HEADERS = ("X-Hub-Patient-ID: IPP7\r\nX-Hub-Patient-Family: MARTIN\r\nX-Hub-Patient-Birth-Date: 19500101\r\n"
               "X-Hub-Org-Name: CH Exemple\r\n")


def _lines(text: bytes) -> bytes:
    return b"".join(text[i:i + 76] + b"\r\n" for i in range(0, len(text), 76))


@pytest.mark.parametrize("variant", ["canonical", "junk", "junk_in_place", "unused_bits", "one_line", "short_lines",
                                     "padding_inside"])
def test_pdf_base64_reused_only_when_canonical(registry, schema, variant):
    """The sender's base64 goes into the CDA as it is only when it is exactly b64encode of the PDF in 76-column
    lines; anything else is decoded and encoded again: the CDA and the attachment always carry the PDF's bytes."""
    import base64
    pdf = make_pdf(4000 if variant != "padding_inside" else 10000)    # 10000: the PDF's end is past the padding
    pdf += b"\n" * ((1 - len(pdf)) % 3)              # 1 byte over a multiple of 3: the last quantum is padded
    text = base64.b64encode(pdf)
    body = {"canonical": _lines(text),
            "junk": _lines(text[:3000] + b"!" + text[3000:]),      # a2b_base64 skips the junk character
            "junk_in_place": _lines(text[:3000] + b"!" + text[3001:]),    # same length, not base64
            "unused_bits": _lines(text[:-3] + b"R==" if text[-3:-2] != b"R" else text[:-3] + b"S=="),
            "one_line": text + b"\r\n",
            # padding where the hub cuts the text in pieces (64 lines): each piece is valid base64, the whole is not
            "padding_inside": _lines(text[:64 * 76 - 2] + b"==" + text[64 * 76:]),
            "short_lines": b"".join(text[i:i + 60] + b"\r\n" for i in range(0, len(text), 60))}[variant]
    head, _ = mail((b"", "application/pdf", "a.pdf"), headers=PDF_HEADERS).split(b"--BOUND--")
    message = head + body + b"--BOUND--\r\n"
    if variant == "junk_in_place":           # not base64: refused, never copied into the CDA as it is
        with pytest.raises(ParseError, match="bad base64"):
            registry.apply("pdf_to_cda_n1_xdm", message, PARAMS)
        return
    if variant == "padding_inside":          # decoded, the PDF ends at the padding: incomplete, refused
        with pytest.raises(ParseError, match="end marker"):
            registry.apply("pdf_to_cda_n1_xdm", message, PARAMS)
        return
    out = registry.apply("pdf_to_cda_n1_xdm", message, PARAMS)
    msg, _, [cda], _ = unpack(out.message, schema)
    sent = base64.b64decode(cda.find("h:component/h:nonXMLBody/h:text", V3).text)
    decoded = base64.b64decode(body, validate=False) if variant != "junk" else base64.b64decode(_lines(text))
    assert sent == msg.get_payload()[2].get_content() == decoded
    assert cda.find("h:component/h:nonXMLBody/h:text", V3).text.encode() == base64.b64encode(decoded)
    assert out.steps[0].name == "pdf_to_cda_n1"
    assert out.steps[0].input_sha256 == hashlib.sha256(message).hexdigest()     # the PDF and the headers


def test_pdf_metadata_from_json_part_and_params(registry, schema):
    meta = {"patient_id": "IPP42", "patient_family": "DURAND", "patient_given": "Luc",
            "patient_birth_date": "19600101", "patient_sex": "M", "org_name": "Clinique"}
    message = mail((make_pdf(), "application/pdf", "cr.pdf"),
                   (json.dumps(meta).encode(), "application/json", "meta.json"))
    out = registry.apply("pdf_to_cda_n1_xdm", message,
                         {**PARAMS, "doc_code": "18748-4", "title": "CR imagerie", "metadata": {"patient_sex": "U"}})
    msg, xdm, [cda], _ = unpack(out.message, schema)
    assert cda.find("h:code", V3).get("code") == "18748-4" and cda.findtext("h:title", namespaces=V3) == "CR imagerie"
    assert cda.find(".//h:administrativeGenderCode", V3).get("code") == "UN"     # JDV_J143_AdministrativeGender_CISIS
    assert msg["X-MSS-INS"] == "N" and out.patient_ins is None
    assert xdm.documents[0].patient_id == "IPP42^^^&1.2.250.1.999.1.3&ISO^PI"


def test_pdf_missing_or_bad_metadata(registry):
    with pytest.raises(ParseError, match="patient_family"):
        registry.apply("pdf_to_cda_n1_xdm", mail((make_pdf(), "application/pdf", "a.pdf")), PARAMS)
    with pytest.raises(ParseError) as info:
        registry.apply("pdf_to_cda_n1_xdm", mail((make_pdf(), "application/pdf", "a.pdf"),
                                                 headers="X-Hub-Patient-INS-OID: 1.2.3\r\n"), PARAMS)
    assert info.value.where == "X-Hub-Patient-INS-OID"


def test_invalid_cda_raises_transform_error_with_steps(registry):
    meta = {"patient_id": "IPP1", "patient_family": "X", "patient_birth_date": "19600101", "org_name": "C",
            "facility_code": "SA 01"}     # a space is not allowed in a code: the XSD refuses it
    with pytest.raises(TransformError) as info:
        registry.apply("pdf_to_cda_n1_xdm", mail((make_pdf(), "application/pdf", "a.pdf")),
                       {**PARAMS, "metadata": meta})
    assert info.value.validation.startswith("invalid: ")
    assert info.value.steps[-1].name == "pdf_to_cda_n1" and info.value.steps[-1].output_sha256 == ""


def test_chain_errors(registry):
    with pytest.raises(TransformError, match="unknown transform chain"):
        registry.apply("nope", b"", {})
    with pytest.raises(TransformError, match="no HPRIM"):
        registry.apply("hprim_to_cda_xdm", b"Subject: x\r\n\r\nhello\r\n", {})
    two = sample("hprim/synthetic_hprim_net_biologie.txt").replace(b"****FINFICHIER****\r\n", b"")
    two = two + two + b"****FINFICHIER****\r\n"
    with pytest.raises(TransformError, match="one patient per message"):
        registry.apply("hprim_to_cda_xdm", mail((two, "text/plain", "a.txt")), PARAMS)


def test_same_input_same_output(registry):
    message = mail((sample("hprim/synthetic_hprim_sante_2.2_ORU.hpr"), "text/plain", "res.hpr"))
    a, b = (registry.apply("hprim_to_cda_xdm", message, PARAMS) for _ in range(2))
    assert a.message == b.message and [s.output_sha256 for s in a.steps] == [s.output_sha256 for s in b.steps]


def test_detection_kinds():
    def kind(payload, name="x.dat"):
        d = detect(mail((payload, "application/octet-stream", name))).primary
        return d.kind, d.flavour
    assert kind(sample("hprim/synthetic_hprim_sante_2.2_ORU.hpr")) == ("hprim_sante", "")
    assert kind(sample("hprim/synthetic_hprim_net_biologie.txt")) == ("hprim_net", "")
    assert kind(sample("hl7v2/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7")) == ("hl7_oru", "cisis")
    assert kind(sample("hl7v2/message_MDM__LPS_MSS_CR_Radio_INIT_N1.er7")) == ("hl7_mdm", "cisis")
    assert kind(b"MSH|^~\\&|A|B|C|D|2025||ORU^R01|1|P|2.5\rOBX|1|NM|1-8^x^LN||1\r") == ("hl7_oru", "lab3")
    assert kind(make_pdf()) == ("pdf", "")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("IHE_XDM/SUBSET01/METADATA.XML", "<x/>")
    assert kind(buf.getvalue(), "archive.zip") == ("xdm", "")
    plain = b"From: a@b\r\nSubject: hi\r\n\r\nJust text.\r\n"
    d = detect(plain)
    assert (d.kind, len(d.parts), d.summary.kind) == ("other", 1, "other")


def test_a_transformed_message_keeps_its_trace_fields_first(registry, schema):
    """The hub's own Received field (added at intake) and the sender's are kept, in order, at the top: a relay never
    removes trace fields (RFC 5321 4.4), and the next hop counts them to detect loops."""
    hops = ("Received: from dpi.ch-test.example ([10.1.2.3])\r\n\tby hub.example.org (hub) with ESMTPSA id 1a2b\r\n"
            "\tfor <dr.house@medecin.mssante.fr>; Wed, 15 Jan 2025 10:31:00 +0100\r\n"
            "Received: from sil.labo.example by mx.labo.example; Wed, 15 Jan 2025 10:30:30 +0100\r\n")
    message = hops.encode() + mail((sample("hprim/synthetic_hprim_sante_2.2_ORU.hpr"), "text/plain", "res.hpr"))
    out = registry.apply("hprim_to_cda_xdm", message, PARAMS)
    msg, *_ = unpack(out.message, schema)
    assert out.message.startswith(b"Received: from dpi.ch-test.example ([10.1.2.3])\r\n\tby hub.example.org")
    assert [v.split()[1] for v in msg.get_all("Received")] == ["dpi.ch-test.example", "sil.labo.example"]


@pytest.mark.parametrize("pdf_size", [4000, 120_000])
def test_xdm_archive_reads_back_with_zipfile(registry, pdf_size):
    """The archive written in one join (ISA-L deflate and CRC-32) is what `zipfile` reads and checks: every CRC
    right, the small text entries stored, the metadata deflated, a CDA of 64 KB or more stored."""
    out = registry.apply("pdf_to_cda_n1_xdm", mail((make_pdf(pdf_size), "application/pdf", "a.pdf"),
                                                   headers=PDF_HEADERS), PARAMS)
    xdm = next(p for p in message_from_bytes(out.message, policy=policy.default).iter_attachments()
               if p.get_filename() == "IHE_XDM.zip").get_content()
    with zipfile.ZipFile(io.BytesIO(xdm)) as zf:
        assert zf.testzip() is None                      # every entry's CRC-32 checked
        methods = {i.filename: i.compress_type for i in zf.infolist()}
        cda = zf.read("IHE_XDM/SUBSET01/DOC0001.XML")
    assert methods["README.TXT"] == methods["INDEX.HTM"] == zipfile.ZIP_STORED
    assert methods["IHE_XDM/SUBSET01/METADATA.XML"] == zipfile.ZIP_DEFLATED
    assert methods["IHE_XDM/SUBSET01/DOC0001.XML"] == (zipfile.ZIP_STORED if len(cda) >= 65536 else zipfile.ZIP_DEFLATED)
    assert cda.startswith(b"<?xml") and cda.rstrip().endswith(b"</ClinicalDocument>")
