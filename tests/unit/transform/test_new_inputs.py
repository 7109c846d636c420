"""Inputs as other labs and hospitals send them (QA as a new user): each test is a defect a new sender's file
showed, and fails on the code before its fix."""

from __future__ import annotations

import pytest
from lxml import etree
from tx_support import NOW, V3, cdas, mail

from hub.errors import ParseError
from hub.transform.parse.hl7v2 import parse_er7, read_lab_oru
from hub.transform.parse.hprim import parse_hprim_sante
from hub.transform.parse.text import decode_text

CP1252_HPRIM = "\r".join([
    "H|^~\\&|Z.HPR||LBZ^LABO ZETA||ORU|||MED1^DR MEDECIN||P|H2.4^C|20250401101500",
    "P|1|PZ1|Z1|185057511212345|ESSAI^PAUL||19850512|M",
    "OBR|1||^Z11|IONO^Ionogramme^L|R||202504010700",
    "OBX|1|NM|K^Potassium^L^2823-3^Potassium^LN||5,8|mmol/l|3,5-5,0|H|||F",
    "C|1|L|Contrôle conseillé – l’échantillon était hémolysé (cœur), 5 €…",
    "L|1||1|5", ""]).encode("cp1252")


def test_windows_1252_text_from_a_lab_is_read_as_such_not_as_invisible_controls():
    [report] = parse_hprim_sante(CP1252_HPRIM)
    assert report.results[0].comments == ("Contrôle conseillé – l’échantillon était hémolysé (cœur), 5 €…",)
    oru = ("MSH|^~\\&|SIL|LAB|HUB|REG|20250401101500||ORU^R01|1|P|2.5|||||FRA|8859/1\r"
           "PID|1||P1^^^LAB^PI||ESSAI^PAUL^^^^^L||19850512|M\r"
           "OBR|1|C1|L1|IONO^Iono^L|||20250401070000\r"
           "OBX|1|ST|K^Potassium^L||non rendu – hémolysé||||||F\r").encode("cp1252")
    assert read_lab_oru(parse_er7(oru)).results[0].value == "non rendu – hémolysé"


@pytest.mark.parametrize("raw", [b"caf\xe9 \x81 ok", "caf\u0092".encode("utf-8")])
def test_a_byte_with_no_character_in_latin1_nor_cp1252_is_refused_naming_its_line(raw):
    with pytest.raises(ParseError) as err:
        decode_text(b"line one\r" + raw, "HPRIM")
    assert "control character U+00" in str(err.value) and err.value.where == "line 2"


@pytest.mark.parametrize("system", ["LN", "LOINC", "2.16.840.1.113883.6.1", "ln"])
def test_loinc_is_read_whatever_name_the_sender_gives_its_coding_system(system):
    oru = ("MSH|^~\\&|SIL|LAB|HUB|REG|20250401101500||ORU^R01|1|P|2.5\r"
           "PID|1||P1^^^LAB^PI||ESSAI^PAUL^^^^^L||19850512|M\r"
           f"OBR|1|C1|L1|24362-6^Bilan^{system}|||20250401070000\r"
           f"OBX|1|NM|2345-7^Glucose^{system}||5.4|mmol/L|4.1-5.9|N|||F\r"
           f"OBX|2|NM|GLU^Glycemie^L^2345-7^Glucose^{system}||5.4|mmol/L|4.1-5.9|N|||F\r").encode()
    report = read_lab_oru(parse_er7(oru))
    assert [r.loinc for r in report.results] == ["2345-7", "2345-7"]
    assert report.batteries[0].loinc == "24362-6"
    hprim = ("H|~^\\&|Z.HPR||LBZ~LABO||ORU|||||P|H2.2~C|202504011015\r"
             "P|1|PZ1|Z1||ESSAI~PAUL||19850512|M\r"
             f"OBR|1||~Z11|24362-6~Bilan~{system}|R||202504010700\r"
             f"OBX|1|NM|GLU~Glycemie~L~2345-7~Glucose~{system}||5,4|mmol/l|4,1-5,9|N|||F\r"
             f"OBX|2|NM|2345-7~Glucose~{system}||5,4|mmol/l|4,1-5,9|N|||F\rL|1||1|5\r").encode()
    [report] = parse_hprim_sante(hprim)
    assert [r.loinc for r in report.results] == ["2345-7", "2345-7"]
    assert report.batteries[0].loinc == "24362-6"


def test_hl7_escapes_are_read_highlighting_and_hex_included_never_sent_raw():
    oru = ("MSH|^~\\&|SIL|LAB|HUB|REG|20250401101500||ORU^R01|1|P|2.5\r"
           "PID|1||P1^^^LAB^PI||ESSAI^PAUL^^^^^L||19850512|M\r"
           "OBR|1|C1|L1|IONO^Iono^L|||20250401070000\r"
           "NTE|1|L|Commentaire \\H\\important\\N\\ :\\.sp\\suite \\E\\F\\E\\ \\X41C3A9\\ \\X00\\ \\.in+4\\fin\r"
           "OBX|1|ST|K^Potassium^L||Non \\H\\rendu\\N\\\\.br\\h\\X e9\\molys\\XE9\\||||||F\r").encode("latin-1")
    report = read_lab_oru(parse_er7(oru))
    assert report.batteries[0].comments == ("Commentaire important :\nsuite \\F\\ Aé \\X00\\ fin",)
    assert report.results[0].value == "Non rendu\nh\\X e9\\molysé"


def test_antibiogram_and_serology_flags_are_interpretation_codes_of_the_ans_value_set(conformant):
    oru = ("MSH|^~\\&|SIL|LAB|HUB|REG|20250401101500||ORU^R01|1|P|2.5\r"
           "PID|1||280037512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||MARTIN-ESSAI^SOPHIE^SOPHIE^^^^L"
           "||19800315|F|||^^LYON^^^^BDL^^69383\r"
           "OBR|1|C1|L1|ATB^Antibiogramme^L|||20250401070000|||||||||||||||20250401100000|||F|||||||"
           "10101234567&BIOLOGISTE&Claire\r"
           "OBX|1|CE|18862-3^Amoxicilline^LN||R^Résistant^HL70078|||R|||F\r"
           "OBX|2|CE|18864-9^Ampicilline^LN||S^Sensible^HL70078|||S|||F\r"
           "OBX|3|ST|5195-3^VIH^LN||positif|||POS|||F\r"
           "OBX|4|ST|18906-8^Ciprofloxacine^LN||MS|||MS|||F\r").encode()
    out = conformant.apply("hl7_oru_to_cda_xdm", mail((oru, "application/hl7-v2", "k.hl7")), {"now": NOW},
                           account="labo-alpha")
    [doc] = cdas(out.message)
    flags = {o.find("h:code", V3).get("code"): o.find("h:interpretationCode", V3)
             for o in etree.fromstring(doc).iterfind(".//h:observation[h:value]", V3)}
    assert {c: (f.get("code"), f.get("displayName")) for c, f in flags.items() if f is not None} == {
        "18862-3": ("R", "Résistant"), "18864-9": ("S", "Sensible"), "5195-3": ("POS", "Positif")}
    step = next(s for s in out.steps if s.name == "oru_to_cda_n3")
    assert "flag 'MS' of '18906-8' is not an HL7 interpretation code: written in the narrative only" in step.warnings
    assert next(s for s in out.steps if s.name == "cda_schematron").validation == "conformant (5 schematrons)"


def test_a_loinc_map_saved_by_excel_with_a_bom_maps_its_first_code(tmp_path):
    from hub.transform.terminology.loinc import LoincMap

    path = tmp_path / "map.csv"
    path.write_bytes(b"\xef\xbb\xbfGLY,14749-6,Glucose,mmol/L\r\nCREA,14682-9,Creatinine,umol/L\r\n")
    assert LoincMap.from_file(str(path)).get("GLY").loinc == "14749-6"
    path.write_bytes(b"\xef\xbb\xbflocal_code,loinc_code,loinc_label,ucum_unit\r\nGLY,14749-6,Glucose,mmol/L\r\n")
    assert LoincMap.from_file(str(path)).get("GLY").loinc == "14749-6"


def test_oids_written_as_urn_oid_uris_in_a_hospitals_json_are_read_as_oids():
    from hub.transform.parse import metadata as md

    m = md.merge(md.from_object({"patient": {"ins": {"value": "185057511212345", "oid": "urn:oid:1.2.250.1.213.1.4.10"},
                                             "ipp": {"value": "77", "oid": "URN:OID:1.2.250.1.999.88.1"}},
                                 "document": {"id": {"root": "urn:oid:1.2.250.1.999.88.2", "extension": "D1"}}}))
    assert (m["patient_ins_oid"], m["patient_id_oid"], m["doc_id_root"]) == (
        "1.2.250.1.213.1.4.10", "1.2.250.1.999.88.1", "1.2.250.1.999.88.2")
    with pytest.raises(ParseError) as err:
        md.merge({"patient_ins": "185057511212345", "patient_ins_oid": "urn:oid:1.2.250.1.999"})
    assert err.value.where == "metadata.patient_ins_oid"


def _mail_b64(pdf: bytes, meta: bytes, width: int) -> bytes:
    """A mail with the PDF in base64 lines of `width` characters (76: what the hub reuses without decoding)."""
    import base64

    b64 = base64.b64encode(pdf)
    body = b"\r\n".join(b64[i:i + width] for i in range(0, len(b64), width))
    return (b"From: a@b.fr\r\nTo: c@d.fr\r\nSubject: lettre\r\nMIME-Version: 1.0\r\n"
            b'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: application/pdf; name="l.pdf"\r\n'
            b"Content-Transfer-Encoding: base64\r\n\r\n" + body + b"\r\n--B\r\nContent-Type: application/json\r\n\r\n"
            + meta + b"\r\n--B--\r\n")


@pytest.mark.parametrize("width", [76, 60])
def test_a_pdf_cut_in_transit_is_refused_not_sent_as_the_letter(registry, width):
    from tx_support import corpus, make_pdf, mdm_t02

    pdf, meta = make_pdf(5000), corpus("letter_flat.json")
    out = registry.apply("pdf_to_cda_n1_xdm", _mail_b64(pdf, meta, width), {"now": NOW})
    assert cdas(out.message)
    for cut in (len(pdf) - 8, len(pdf) // 2, 2000):
        with pytest.raises(ParseError) as err:
            registry.apply("pdf_to_cda_n1_xdm", _mail_b64(pdf[:cut], meta, width), {"now": NOW})
        assert err.value.where == "PDF attachment" and "no end marker (%%EOF)" in str(err.value)
    with pytest.raises(ParseError) as err:             # an MDM^T02 carrying a cut PDF
        registry.apply("pdf_to_cda_n1_xdm", mail((mdm_t02(pdf[:3000]), "application/hl7-v2", "m.hl7")),
                       {"now": NOW})
    assert "no end marker" in str(err.value)
    with pytest.raises(ParseError) as err:             # a lab's PDF copy beside its HPRIM
        registry.apply("hprim_to_cda_xdm", mail((corpus("hs_alpha_hemato.hpr"), "text/plain", "a.hpr"),
                                                (pdf[:3000], "application/pdf", "cr.pdf")), {"now": NOW})
    assert err.value.where == "PDF attachment"


def test_the_last_bytes_of_canonical_base64_are_decoded_exactly():
    import base64
    import os

    from hub.transform.parse.mime import Base64Body

    for size in (0, 1, 2, 3, 56, 57, 58, 1000, 1024, 1025, 3000):
        data = os.urandom(size)
        b64 = base64.b64encode(data)
        pieces = [b64[i:i + 76] for i in range(0, len(b64), 76)] or [b""]
        assert data.endswith(Base64Body(pieces, memoryview(b"")).suffix(1024)[-1024:])
        assert len(Base64Body(pieces, memoryview(b"")).suffix(1024)) >= min(size, 1024)


def test_hprim_net_res_lines_ending_with_their_delimiter_are_read():
    from tx_support import corpus

    from hub.transform.parse.hprim import parse_hprim_net

    data = corpus("hn_delta.txt").replace(b"|0.74|1.06\r\n", b"|0.74|1.06|\r\n").replace(b"|>60||N|F\r\n",
                                                                                           b"|>60||N|F|||||\r\n")
    [report] = parse_hprim_net(data)
    [glucose] = [r for r in report.results if r.local_code == "GLY"]
    assert (glucose.value2, glucose.unit2, glucose.range2_low, glucose.range2_high) == ("0.97", "g/l", "0.74", "1.06")
    with pytest.raises(ParseError) as err:          # a 14th field with a value is still refused
        parse_hprim_net(corpus("hn_delta.txt").replace(b"|0.74|1.06\r\n", b"|0.74|1.06|X\r\n"))
    assert "RES line has 14 fields" in str(err.value)


def test_g_per_litre_in_a_file_written_in_capitals_is_never_read_as_giga_per_litre():
    from hub.transform.terminology.loinc import LoincMap

    def hprim(units):
        return "\r".join([
            "H|~^\\&|Z.HPR||LBZ~LABO||ORU|||||P|H2.2~C|202504011015",
            "P|1|PZ1|Z1||ESSAI~PAUL||19850512|M",
            "OBR|1||~Z11|BIO~Bilan~L|R||202504010700",
            f"OBX|1|NM|GLY~GLYCEMIE~L||1,05|{units[0]}|0,70 - 1,10|N|||F",
            f"OBX|2|NM|NA~SODIUM~L||141|{units[1]}|136 - 145|N|||F",
            f"OBX|3|NM|GB~LEUCOCYTES~L||6,8|{units[2]}|4,0 - 10,0|N|||F", "L|1||1|6", ""]).encode()

    plain = LoincMap()
    [caps] = parse_hprim_sante(hprim(("G/L", "MMOL/L", "G/L")))
    report, warnings = plain.apply(caps)
    assert [(r.ucum, r.unit) for r in report.results] == [("", "G/L"), ("", "MMOL/L"), ("", "G/L")]
    assert "unit 'G/L' of 'GLY' is ambiguous in a file that writes its units in capitals (10*9/L or g/L): " \
           "result sent as text with the unit as written" in warnings
    mapped = LoincMap.from_csv_text("GLY,2345-7,Glucose,g/L\nGB,6690-2,Leucocytes,10*9/L\n")
    report, _ = mapped.apply(caps)                  # the LOINC map's unit says which one is meant
    assert [r.ucum for r in report.results if r.local_code != "NA"] == ["g/L", "10*9/L"]
    [mixed] = parse_hprim_sante(hprim(("g/l", "mmol/l", "G/l")))
    report, _ = plain.apply(mixed)
    assert [r.ucum for r in report.results] == ["g/L", "mmol/L", "10*9/L"]
    [upper_giga] = parse_hprim_sante(hprim(("g/l", "mmol/l", "G/L")))    # G/L beside lower-case units: giga
    assert plain.apply(upper_giga)[0].results[2].ucum == "10*9/L"


def test_a_patient_of_unknown_sex_is_administrative_gender_un_and_the_report_conformant(conformant):
    import io
    import zipfile
    from email import message_from_bytes, policy

    from tx_support import corpus

    data = corpus("hs_alpha_hemato.hpr").replace(b"|19850512|M|", b"|19850512|U|")
    out = conformant.apply("hprim_to_cda_xdm", mail((data, "text/plain", "a.hpr")), {"now": NOW},
                           account="labo-alpha")
    [doc] = cdas(out.message)
    assert etree.fromstring(doc).find(".//h:administrativeGenderCode", V3).get("code") == "UN"
    assert next(s for s in out.steps if s.name == "cda_schematron").validation == "conformant (5 schematrons)"
    xdm = next(p for p in message_from_bytes(out.message, policy=policy.default).iter_attachments()
               if p.get_filename() == "IHE_XDM.zip")
    metadata = zipfile.ZipFile(io.BytesIO(xdm.get_content())).read("IHE_XDM/SUBSET01/METADATA.XML")
    assert b"PID-8|U<" in metadata                 # HL7 v2 table 0001 in the XDM's sourcePatientInfo


@pytest.mark.parametrize("names, family, used", [
    ("LEROY-ESSAI^SOSO^^^^^D~MARTIN-ESSAI^SOPHIE^SOPHIE^^^^L", "MARTIN-ESSAI", "LEROY-ESSAI"),
    ("LEROY-ESSAI^SOSO^^^^^D~MARTIN-ESSAI^SOPHIE^SOPHIE^^^^M", "MARTIN-ESSAI", "LEROY-ESSAI"),   # maiden name
    ("MARTIN-ESSAI^SOPHIE", "MARTIN-ESSAI", ""),                                                 # untyped
    ("LEROY-ESSAI^SOSO^^^^^D", None, None)])
def test_a_used_name_is_never_sent_as_the_birth_name(names, family, used):
    oru = ("MSH|^~\\&|SIL|LAB|HUB|REG|20250401101500||ORU^R01|1|P|2.5\r"
           f"PID|1||280037512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||{names}||19800315|F\r"
           "OBR|1|C1|L1|IONO^Iono^L|||20250401070000\r"
           "OBX|1|NM|K^Potassium^L||4.1|mmol/L|3.5-5.0|N|||F\r").encode()
    if family is None:
        with pytest.raises(ParseError) as err:
            read_lab_oru(parse_er7(oru))
        assert err.value.where == "PID[1].5" and "no birth name" in str(err.value)
        return
    patient = read_lab_oru(parse_er7(oru)).patient
    assert (patient.family, patient.used_family) == (family, used)


@pytest.mark.parametrize("encoding", ["utf-8", "latin-1", "cp1252"])
def test_x_hub_headers_in_raw_8bit_are_read_never_replaced_by_question_marks(registry, encoding):
    from tx_support import make_pdf

    message = mail((make_pdf(), "application/pdf", "l.pdf"), headers=(
        "X-Hub-Patient-INS: 279035121518989\r\nX-Hub-Patient-INS-OID: 1.2.250.1.213.1.4.10\r\n"
        "X-Hub-Patient-Birth-Date: 19790328\r\nX-Hub-Patient-Sex: F\r\nX-Hub-Org-Name: CH Exemple\r\n"
        "X-Hub-Patient-Family: @FAMILY@\r\nX-Hub-Patient-Given: @GIVEN@\r\n"))
    message = message.replace(b"@FAMILY@", "MÜLLER-ESSAI".encode(encoding)).replace(
        b"@GIVEN@", ("Hélène Zoë" if encoding != "cp1252" else "Hélène Œdipe").encode(encoding))
    out = registry.apply("pdf_to_cda_n1_xdm", message, {"now": NOW})
    [doc] = cdas(out.message)
    name = etree.fromstring(doc).find(".//h:patient/h:name", V3)
    assert name.findtext("h:family", namespaces=V3) == "MÜLLER-ESSAI"
    assert name.findtext("h:given", namespaces=V3) == ("Hélène Zoë" if encoding != "cp1252" else "Hélène Œdipe")


@pytest.mark.parametrize("text, names", [
    ('[lab]\norg_finess = "12"\n', "[lab] metadata.org_finess: FINESS must be 9 characters"),
    ('[lab]\npatient_ins_oid = "1.2.3"\n', "[lab] metadata.patient_ins_oid: unknown INS OID"),
    ('[lab.metadata_map]\n"patient.birthname" = "a.b"\n', "'patient.birthname' is not a path of the metadata model"),
    ('[lab.metadata_map]\n"patient.birth_name" = "a..b"\n', "patient.birth_name: 'a..b' is not a JSON path"),
    ('[lab]\nchapter = "1234-5"\n', "[lab] chapter '1234-5' is not a CR-BIO chapter"),
    ('[lab]\ntz = "Europe/Pariss"\n', "[lab] tz 'Europe/Pariss' is not a time zone"),
    ('[lab]\ndoc_code = "lettre"\n', "[lab] doc_code 'lettre' is not a LOINC code"),
])
def test_a_sender_profile_value_is_checked_at_start_up_not_at_the_senders_first_message(tmp_path, text, names):
    """Each of these was accepted at start-up: then every message of that sender failed (or, for the mapping,
    the field was silently never read)."""
    from hub.errors import ConfigError
    from hub.settings import TransformSection
    from hub.transform import build_registry

    path = tmp_path / "senders.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_registry(TransformSection(senders=str(path)), "NIL")
    assert str(err.value).startswith(f"{path}: [lab") and names in str(err.value)


def test_a_lab_report_with_no_date_is_refused_never_dated_by_the_conversion(registry):
    from tx_support import corpus

    hprim = ("H|~^\\&|Z.HPR||LBZ~LABO||ORU|||||P|H2.2~C|\r"      # no H-14, no OBR-22
             "P|1|PZ1|Z1|185057511212345|ESSAI~PAUL||19850512|M\r"
             "OBR|1||~Z11|BIO~Bilan~L|R\rOBX|1|NM|NA~SODIUM~L||141|mmol/l|136 - 145|N|||F\rL|1||1|5\r").encode()
    net = corpus("hn_delta.txt").replace(b"\r\n13/03/2025\r\n", b"\r\n\r\n")
    for data, chain, where in ((hprim, "hprim_to_cda_xdm", "H-14 and OBR-22"),
                               (net, "hprim_to_cda_xdm", "line 10 (date of the report)")):
        with pytest.raises(ParseError) as err:
            registry.apply(chain, mail((data, "text/plain", "r.txt")), {"now": NOW})
        assert err.value.where == where and "the report has no date" in str(err.value)


@pytest.mark.parametrize("written", ["1/40", "< 1/80", "5 - 3", "10-3"])
def test_a_dilution_or_an_inverted_range_is_never_sent_as_an_interval(written):
    from tx_support import corpus

    from hub.transform.parse.hprim import parse_hprim_net
    from hub.transform.terminology.dates import parse_range

    assert parse_range(written) == ("", "", False, False)
    [report] = parse_hprim_sante(CP1252_HPRIM.replace(b"|3,5-5,0|", f"|{written}|".encode()))
    r = report.results[0]
    assert (r.range_low, r.range_high, r.range_text) == ("", "", written)
    [net] = parse_hprim_net(corpus("hn_delta.txt").replace(b"|5.40|mmol/l|4.10|5.90|", b"|5.40|mmol/l|5.90|4.10|"))
    glucose = next(x for x in net.results if x.local_code == "GLY")
    assert (glucose.range_low, glucose.range_high, glucose.range_text) == ("", "", "5.90 - 4.10")


def test_ranges_as_french_labs_write_them_are_still_intervals():
    from hub.transform.terminology.dates import parse_range

    assert parse_range("3,5 - 5,0") == ("3.5", "5.0", False, False)
    assert parse_range("-0.5 - -0.1") == ("-0.5", "-0.1", False, False)
    assert parse_range("(45 à 90)") == ("45", "90", False, False)
    assert parse_range("0 - 0") == ("0", "0", False, False)


@pytest.mark.parametrize("edit, where, message", [
    (lambda m, b64: m.replace(b"|||||AU|N", b"|||||IP|N"), "TXA[1].17", "completion status 'IP' (in progress)"),
    (lambda m, b64: m.replace(b"|||||AU|N", b"|||||IN|N"), "TXA[1].17", "completion status 'IN' (incomplete)"),
    (lambda m, b64: m.replace(b"||||||F", b"||||||P"), "OBX[1].11", "result status 'P': the document is not final"),
    (lambda m, b64: m + b"OBX|2|ED|11490-0^Annexe^LN||^application^pdf^Base64^" + b64 + b"||||||F\r", "OBX[2].5",
     "MDM^T02 with 2 PDF documents")])
def test_an_mdm_draft_or_one_carrying_two_pdfs_is_refused_not_sent_as_a_final_letter(edit, where, message):
    import base64

    from tx_support import make_pdf, mdm_t02

    from hub.transform.parse.mdm import read_mdm

    pdf = make_pdf()
    assert read_mdm(parse_er7(mdm_t02(pdf)))[0] == pdf
    with pytest.raises(ParseError) as err:
        read_mdm(parse_er7(edit(mdm_t02(pdf), base64.b64encode(pdf))))
    assert err.value.where == where and message in str(err.value)


def _split_ed(message: bytes, pdf: bytes, parts: int, *, bare: bool, sub_id: str = "1", between: str = "") -> bytes:
    """`message` with its one OBX ED PDF split over `parts` consecutive OBX (same OBX-3 and OBX-4), as interface
    engines with a field-length limit send a big document: each part the full ED, or only the base64."""
    import base64

    b64 = base64.b64encode(pdf).decode()
    size = -(-len(b64) // parts)
    chunks = [b64[i:i + size] for i in range(0, len(b64), size)]
    head = "^application^pdf^Base64^"
    lines = []
    for n, chunk in enumerate(chunks, 1):
        value = head + chunk if n == 1 or not bare else chunk
        lines.append(f"OBX|{n}|ED|11490-0^Lettre de liaison^LN|{sub_id}|{value}||||||F")
        if between and n < len(chunks):
            lines.append(between)
    old = f"OBX|1|ED|11490-0^Lettre de liaison^LN||{head}{b64}||||||F".encode()
    assert old in message
    return message.replace(old, "\r".join(lines).encode())


@pytest.mark.parametrize("parts, bare, between", [(2, False, ""), (3, True, ""), (4, False, "NTE|1||partie")])
def test_a_pdf_split_over_several_obx_is_one_document(parts, bare, between):
    """A DPI or an interface engine with a field-length limit splits a big PDF over consecutive OBX with the same
    OBX-3 and OBX-4 (one observation over several OBX). Before: refused as "MDM^T02 with 2 PDF documents" (each part
    the full ED), or the first part alone taken (bare base64 parts), which the %%EOF check then refused."""
    from tx_support import make_pdf, mdm_t02

    from hub.transform.parse.mdm import read_mdm

    pdf = make_pdf(20_000)
    split = _split_ed(mdm_t02(pdf), pdf, parts, bare=bare, between=between)
    assert split.count(b"\rOBX|") == parts
    assert read_mdm(parse_er7(split))[0] == pdf


def test_parts_without_a_sub_id_or_of_another_observation_are_not_joined():
    """Only parts that say they belong together (the same OBX-3 and a non-empty, same OBX-4) are joined: two
    documents are still two, and refused."""
    from tx_support import make_pdf, mdm_t02

    from hub.transform.parse.mdm import read_mdm

    pdf = make_pdf(20_000)
    for split in (_split_ed(mdm_t02(pdf), pdf, 2, bare=False, sub_id=""),
                  _split_ed(mdm_t02(pdf), pdf, 2, bare=False).replace(b"OBX|2|ED|11490-0^", b"OBX|2|ED|34133-9^")):
        with pytest.raises(ParseError) as err:
            read_mdm(parse_er7(split))
        assert err.value.where == "OBX[2].5" and "2 PDF documents" in str(err.value)
    bad = _split_ed(mdm_t02(pdf), pdf, 2, bare=False).replace(b"|1|^application^pdf^Base64^", b"|1|^text^plain^A^", 1)
    with pytest.raises(ParseError):
        read_mdm(parse_er7(bad))


def test_a_split_pdf_letter_reaches_the_gp_whole(registry):
    import base64

    from tx_support import NOW, make_pdf, mdm_t02

    pdf = make_pdf(20_000)
    out = registry.apply("pdf_to_cda_n1_xdm", mail((_split_ed(mdm_t02(pdf), pdf, 3, bare=True),
                                                    "application/hl7-v2", "lettre.hl7")),
                         {"now": NOW, "metadata": {"org_finess": "920000019", "org_name": "CH Essai"}})
    [cda] = cdas(out.message)
    text = etree.fromstring(cda).find(".//{urn:hl7-org:v3}nonXMLBody/{urn:hl7-org:v3}text").text
    assert base64.b64decode(text) == pdf
