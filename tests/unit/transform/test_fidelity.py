"""Clinically faithful converters: one test (at least) per defect class of issue #13, each on the fictitious corpus.

1 units -> UCUM with no guessing; 2 the sender's codes kept (alternate LOINC, battery LOINC, biologist RPPS and name,
OBX-19 times, report time); 3 identity traits (birth place COG, all birth given names, used name and first name);
4 truncated input is a ParseError; 5 HPRIM Net second value / unit and open ranges; 6 the PDF-copy section always,
times on the performers, comment entries, displayNames; 7 the PDF-letter metadata model (nested, mapped, ISO dates,
MDM^T02); 8 per-sender constants."""

from __future__ import annotations

import base64
import re
import zlib

import pytest
from lxml import etree
from tx_support import CORPUS, NOW, V3, XSD, cdas, corpus, make_pdf, mail, mdm_t02

from hub.errors import ParseError
from hub.settings import TransformSection
from hub.transform import build_registry
from hub.transform.parse.hl7v2 import parse_er7, read_lab_oru
from hub.transform.parse.hprim import parse_hprim_net, parse_hprim_sante
from hub.transform.terminology.units import to_ucum

XSI = "{http://www.w3.org/2001/XMLSchema-instance}type"


@pytest.fixture(scope="module")
def registry(loinc_csv):
    """Schema-validated, no schematrons (test_conformance runs them), with the corpus's sender profiles."""
    return build_registry(TransformSection(cda_schema=str(XSD), loinc_map=str(loinc_csv),
                                           senders=str(CORPUS / "senders.toml")), "NIL")


def cda_of(registry, chain, message, account=None, params=None):
    out = registry.apply(chain, message, {"now": NOW, **(params or {})}, account=account)
    [doc] = cdas(out.message)
    return etree.fromstring(doc), out


def observations(root) -> dict:
    out = {}
    for o in root.xpath(".//h:observation[h:templateId/@root='1.3.6.1.4.1.19376.1.3.1.6']", namespaces=V3):
        code = o.find("h:code", V3)
        out[code.get("code") or code.find("h:translation", V3).get("code")] = o
    return out


@pytest.fixture(scope="module")
def alpha(registry):
    return cda_of(registry, "hprim_to_cda_xdm", mail((corpus("hs_alpha_hemato.hpr"), "text/plain", "a.hpr")),
                  "labo-alpha")


@pytest.fixture(scope="module")
def epsilon(registry):
    return cda_of(registry, "hl7_oru_to_cda_xdm", mail((corpus("oru_epsilon.hl7"), "application/hl7-v2", "e.hl7")))


@pytest.fixture(scope="module")
def delta(registry):
    headers = "X-Hub-Author-RPPS: 10101234567\r\nX-Hub-Org-FINESS: 310000019\r\nX-Hub-Org-Name: Labo Delta\r\n"
    return cda_of(registry, "hprim_to_cda_xdm", mail((corpus("hn_delta.txt"), "text/plain", "d.txt"),
                                                     headers=headers))


# ------------------------------------------------------------------ 1. units


@pytest.mark.parametrize("written, ucum", [
    ("G/l", "10*9/L"), ("G/L", "10*9/L"), ("giga/l", "10*9/L"), ("10^9/l", "10*9/L"), ("T/l", "10*12/L"),
    ("g/l", "g/L"), ("g/dl", "g/dL"), ("ml/min/1,73m²", "mL/min/{1.73_m2}"), ("mL/min/1.73 m2", "mL/min/{1.73_m2}"),
    ("µmol/l", "umol/L"), ("μmol/L", "umol/L"), ("UI/l", "[IU]/L"), ("mUI/l", "m[IU]/L"), ("µUI/ml", "u[IU]/mL"),
    ("mEq/l", "meq/L"), ("mm/h", "mm/h"), ("fl", "fL"), ("%", "%"), ("mmHg", "mm[Hg]"), ("mg/24h", "mg/d"),
])
def test_french_unit_spellings_map_to_the_right_ucum(written, ucum):
    assert to_ucum(written) == ucum


@pytest.mark.parametrize("unknown", ["UA/ml", "Mg/l", "unités", "/champ", "mmol/mol créat", "G/l?"])
def test_a_unit_the_table_does_not_know_is_never_guessed(unknown):
    assert to_ucum(unknown) is None


def test_cell_counts_in_g_per_litre_are_giga_per_litre_value_and_both_bounds(alpha):
    root, _ = alpha
    wbc = observations(root)["6690-2"]
    assert wbc.find("h:value", V3).attrib == {XSI: "PQ", "value": "6.8", "unit": "10*9/L"}
    assert [(b.get("value"), b.get("unit")) for b in wbc.find("h:referenceRange//h:value", V3)] == [
        ("4.0", "10*9/L"), ("10.0", "10*9/L")]
    assert observations(root)["789-8"].find("h:value", V3).get("unit") == "10*12/L"
    assert observations(root)["718-7"].find("h:value", V3).get("unit") == "g/dL"


def test_an_unknown_unit_goes_as_text_with_the_unit_as_written_and_a_warning(registry):
    root, out = cda_of(registry, "hprim_to_cda_xdm",
                       mail((corpus("hs_gamma_serologie.hpr"), "text/plain", "c.hpr")), "labo-gamma")
    aslo = observations(root)["ASLO"].find("h:value", V3)
    assert aslo.get(XSI) == "ST" and aslo.text == "180 UA/ml"
    assert "unit 'UA/ml' of 'ASLO' is not in the unit table: result sent as text with the unit as written" in \
        out.warnings


# ------------------------------------------------------------------ 2. the sender's codes


def test_hprim_alternate_loinc_is_sent_with_the_local_code_as_translation(alpha):
    code = observations(alpha[0])["6690-2"].find("h:code", V3)
    assert (code.get("code"), code.get("codeSystem")) == ("6690-2", "2.16.840.1.113883.6.1")
    assert code.find("h:translation", V3).get("code") == "GB"


def test_hl7_local_code_first_with_loinc_alternate_keeps_the_loinc():
    [obx] = [b"OBX|1|NM|CHOL^Cholest\xc3\xa9rol total^L^2093-3^Cholest\xc3\xa9rol total^LN||1,85|g/l||N|||F"]
    msg = b"MSH|^~\\&|A|B|C|D|20250101||ORU^R01|1|P|2.5\rPID|1||P1^^^L^PI||X^Y^^^^^L\rOBR|1|A|B|X^Y^L\r" + obx
    res = read_lab_oru(parse_er7(msg)).results[0]
    assert (res.loinc, res.local_code, res.code_system) == ("2093-3", "CHOL", "L")


def test_battery_loinc_of_obr4_is_an_organizer(epsilon, alpha):
    batteries = epsilon[0].findall(".//h:organizer[@classCode='BATTERY']", V3)
    assert [b.find("h:code", V3).get("code") for b in batteries] == ["24326-1", "58410-2"]
    assert len(batteries[0].findall("h:component/h:observation", V3)) == 3
    assert alpha[0].find(".//h:organizer[@classCode='BATTERY']/h:code", V3).get("code") == "58410-2"


def test_the_validating_biologist_keeps_his_rpps_and_structured_name(alpha, epsilon):
    for root in (alpha[0], epsilon[0]):
        who = root.find("h:legalAuthenticator/h:assignedEntity", V3)
        assert who.find("h:id", V3).attrib == {"root": "1.2.250.1.71.4.2.1", "extension": "810101234567"}
        name = who.find("h:assignedPerson/h:name", V3)
        assert (name.findtext("h:given", namespaces=V3), name.findtext("h:family", namespaces=V3)) == (
            "Claire", "BIOLOGISTE")


def test_analysis_times_and_the_reports_own_time_are_kept(epsilon):
    root, _ = epsilon
    glu = observations(root)["2345-7"]
    [performer] = glu.xpath("h:performer[h:templateId/@root='1.3.6.1.4.1.19376.1.3.3.1.7']", namespaces=V3)
    assert performer.find("h:time/h:high", V3).get("value") == "20250314090000+0100"        # OBX-19
    assert performer.find(".//h:representedOrganization/h:name", V3).text == "Laboratoire Epsilon"
    assert root.find("h:author/h:time", V3).get("value") == "20250314101000+0100"            # OBR-22, not now
    assert root.find("h:effectiveTime", V3).get("value") != root.find("h:author/h:time", V3).get("value")


# ------------------------------------------------------------------ 3. identity traits


def test_identity_traits_birth_place_all_given_names_used_name(epsilon):
    patient = epsilon[0].find("h:recordTarget/h:patientRole/h:patient", V3)
    name = patient.find("h:name", V3)
    given = {(g.get("qualifier"), g.text) for g in name.iterfind("h:given", V3)}
    family = {(f.get("qualifier"), f.text) for f in name.iterfind("h:family", V3)}
    assert given == {(None, "DOMINIQUE MARIE-LOUISE"), ("BR", "DOMINIQUE"), ("CL", "DOM")}
    assert family == {("BR", "PAT-TROIS"), ("CL", "DURAND-ESSAI")}
    assert patient.find("h:birthplace/h:place/h:addr/h:county", V3).text == "51215"
    assert patient.find("h:birthplace/h:place/h:addr/h:city", V3).text == "DOMPREMY"
    ipp = epsilon[0].findall("h:recordTarget/h:patientRole/h:id", V3)[1]
    assert ipp.attrib == {"root": "1.2.250.1.999.77.1", "extension": "IPP4455"}                # IPP with its OID


def test_hprim_birth_given_names_are_all_kept_once(alpha):
    name = alpha[0].find("h:recordTarget/h:patientRole/h:patient/h:name", V3)
    assert [g.text for g in name.iterfind("h:given", V3)] == ["JEAN PIERRE ANDRE", "JEAN"]


# ------------------------------------------------------------------ 4. truncated input


def _cut(data: bytes, marker: bytes) -> bytes:
    return data[:data.index(marker)]


@pytest.mark.parametrize("name, data, where", [
    ("hprim sante cut before L", _cut(corpus("hs_alpha_hemato.hpr"), b"OBX|2|NM|DFG"), "line 10"),
    ("hprim sante cut inside a request", _cut(corpus("hs_alpha_hemato.hpr"), b"OBX|3|NM|HB"), "line 5"),
    ("hprim sante L counts disagree", corpus("hs_alpha_hemato.hpr").replace(b"L|1||1|13", b"L|1||1|31"), "L[1].4"),
    ("hprim sante L patient count", corpus("hs_alpha_hemato.hpr").replace(b"L|1||1|13", b"L|1||2|13"), "L[1].3"),
    ("hprim sante request without result", corpus("hs_gamma_serologie.hpr").replace(b"\rOBX|1", b"\rC|1|L|x\rXBX|1")
     .split(b"\rXBX")[0] + b"\rL|1\r", "line 3"),
])
def test_truncated_hprim_sante_is_a_parse_error(name, data, where):
    with pytest.raises(ParseError) as err:
        parse_hprim_sante(data)
    assert err.value.where == where and "incomplete" in str(err.value)


def test_truncated_hprim_net_is_a_parse_error():
    with pytest.raises(ParseError, match="missing \\*\\*\\*\\*FIN\\*\\*\\*\\*"):
        parse_hprim_net(_cut(corpus("hn_delta.txt"), b"RES|Aspect"))


@pytest.mark.parametrize("cut, where", [
    (b"|F|||", "OBX[7].11"),                # inside the last OBX, before its status
    (b"OBX|1|NM|6690-2", "OBR[2].1"),      # right after the last OBR
])
def test_truncated_hl7_oru_is_a_parse_error(cut, where):
    data = corpus("oru_epsilon.hl7")
    data = data[:data.rindex(cut)] if cut.startswith(b"|") else _cut(data, cut)
    with pytest.raises(ParseError) as err:
        read_lab_oru(parse_er7(data))
    assert err.value.where == where and "incomplete" in str(err.value)


def test_repeated_obx5_values_are_all_kept():
    """OBX-5 repeats: two organisms of one culture, two coded values, the lines of a TX result. Each is kept
    (readable, without the `~` separator); before, a coded value kept only the first one."""
    data = corpus("oru_epsilon.hl7")
    data = data.replace(b"||A^Groupe A^L||", b"||A^Groupe A^L~RH+^Rhesus positif^L||")
    data = data.replace(b"OBX|4|NM|62238-1", b"OBX|4|ST|600-7^Hemoculture^LN||Staphylococcus aureus~Escherichia coli"
                                             b"||||||F\rOBX|5|TX|48767-8^Note^LN||Ligne 1~Ligne 2||||||F\rOBX|6|NM|62238-1")
    results = {r.loinc: r for r in read_lab_oru(parse_er7(data)).results}
    assert results["883-9"].value == "Groupe A, Rhesus positif"
    assert results["600-7"].value == "Staphylococcus aureus, Escherichia coli"
    assert results["48767-8"].value == "Ligne 1\nLigne 2"


@pytest.mark.parametrize("comp, rep", [("~", "^"), ("^", "~")])
def test_hprim_coded_and_repeated_values_are_read_not_sent_raw(comp, rep):
    """An HPRIM CE value is `code~label~system` (its label is the result) and a value may repeat; before, both went
    out with the delimiters as written (`YEL~Jaune~L`, `E. coli^Klebsiella`), in either delimiter convention."""
    c, r = comp, rep
    lines = [f"H|{c}{r}\\&|R.HPR||LAB{c}LABO||ORU|||DR{c}DOCTEUR||P|H2.2{c}C|202501151030",
             f"P|1|PAT1|F1||TESTPATIENT{c}MARIE||19800214|F",
             f"OBR|1||{c}F1|URI{c}Urines{c}L|R||202501150745||||N|||202501150830",
             f"OBX|1|CE|COUL{c}Couleur{c}L||YEL{c}Jaune{c}L{r}TRB{c}Trouble{c}L||||N|||F",
             f"OBX|2|ST|GERM{c}Germes{c}L||E. coli{r}Klebsiella||||A|||F",
             f"OBX|3|TX|CONC{c}Conclusion{c}L||Ligne 1{r}Ligne 2||||||F", "L|1"]
    [report] = parse_hprim_sante("\r\n".join(lines).encode("latin-1"))
    assert [x.value for x in report.results] == ["Jaune, Trouble", "E. coli, Klebsiella", "Ligne 1\nLigne 2"]


def test_an_hl7_oru_with_two_patients_is_refused_not_merged_into_one_report(registry):
    """ORU^R01 may repeat its PATIENT_RESULT group; one CR-BIO names one patient, so a second PID would put another
    person's results into the first one's record: refused (as HPRIM with two patients), naming the second PID."""
    data = corpus("oru_epsilon.hl7")
    second = (b"PID|1||180127512345678^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||AUTRE-TEST^PAUL^PAUL^^^^L"
              b"||19800127|M\rOBR|1|CMD2|F2|24331-1^Lipid panel^LN|||20250312080000||||||||||||||20250312140000|||F"
              b"\rOBX|1|NM|2093-3^Cholesterol^LN||3.10|g/L|<2.00|H|||F\r")
    sep = b"\r\n" if b"\r\n" in data else b"\r" if b"\r" in data else b"\n"
    message = mail((data.rstrip() + sep + second.replace(b"\r", sep), "application/hl7-v2", "e.hl7"))
    with pytest.raises(ParseError) as err:
        registry.apply("hl7_oru_to_cda_xdm", message, {"now": NOW})
    assert err.value.where == "PID[2].1" and "one patient per message" in str(err.value)


def test_a_truncated_file_fails_the_chain_before_anything_is_built(registry):
    message = mail((_cut(corpus("hs_alpha_hemato.hpr"), b"OBX|3"), "text/plain", "a.hpr"))
    with pytest.raises(ParseError):
        registry.apply("hprim_to_cda_xdm", message, {"now": NOW}, account="labo-alpha")


# ------------------------------------------------------------------ 5. HPRIM Net


def test_hprim_net_second_value_and_unit_and_open_ranges(delta):
    obs = observations(delta[0])
    gly = obs["14749-6"].find("h:value", V3)
    assert gly.attrib == {XSI: "PQ", "value": "5.40", "unit": "mmol/L"}
    assert gly.find("h:translation", V3).attrib == {"value": "0.97", "code": "g/L",
                                                     "codeSystem": "2.16.840.1.113883.6.8", "codeSystemName": "UCUM"}
    crp = obs["CRP"].find("h:referenceRange//h:value", V3)
    assert [(b.tag.split("}")[1], b.get("value"), b.get("inclusive")) for b in crp] == [("high", "5", "false")]
    dfg = obs["DFG"].find("h:referenceRange//h:value", V3)
    assert [(b.tag.split("}")[1], b.get("value"), b.get("inclusive")) for b in dfg] == [("low", "60", "false")]
    assert obs["DFG"].find("h:value", V3).get("unit") == "mL/min/{1.73_m2}"
    text = etree.tostring(delta[0].find(".//h:section/h:component/h:section/h:text", V3), encoding="unicode")
    assert "0.97 g/l" in text and "0.74 - 1.06" in text


# ------------------------------------------------------------------ 6. CR-BIO 2024.01 requirements


def _pdf_text(pdf: bytes) -> str:
    """The text of a PDF's (Flate-compressed) page streams: enough to check what the page says."""
    out = []
    for m in re.finditer(rb"stream\r?\n(.*?)endstream", pdf, re.S):
        data = m.group(1).strip()
        if data.endswith(b"~>"):                    # ReportLab: ASCII85 over Flate
            data = base64.a85decode(data[:-2], adobe=False)
        try:
            out.append(zlib.decompress(data).decode("latin-1"))
        except zlib.error:
            continue
    return "".join(out)


def test_the_pdf_copy_is_always_there_rendered_by_the_hub_when_the_lab_sends_none(registry):
    root, out = cda_of(registry, "hprim_to_cda_xdm", mail((corpus("hs_gamma_serologie.hpr"), "text/plain", "c.hpr")),
                       "labo-gamma")
    assert out.steps[0].name == "report_to_pdf"
    [media] = root.xpath(".//h:section[h:templateId/@root='1.2.250.1.213.1.1.2.243']//h:observationMedia/h:value",
                         namespaces=V3)
    pdf = base64.b64decode(media.text)
    assert pdf.startswith(b"%PDF-") and media.get("mediaType") == "application/pdf"
    text = _pdf_text(pdf)
    for expected in ("MARTIN-ESSAI", "Ferritine", "35 \\265g/l", "15 - 150", "Laboratoire Gamma", "DIRECTEUR",
                     "Antistreptolysines O", "180 UA/ml"):
        assert expected in text, expected


def test_a_lab_pdf_is_the_copy_and_is_attached(registry):
    pdf = make_pdf(4000)
    root, out = cda_of(registry, "hprim_to_cda_xdm", mail((corpus("hs_gamma_serologie.hpr"), "text/plain", "c.hpr"),
                                                          (pdf, "application/pdf", "cr.pdf")), "labo-gamma")
    media = root.find(".//h:observationMedia/h:value", V3)
    assert base64.b64decode(media.text) == pdf and "report_to_pdf" not in [s.name for s in out.steps]


def test_performer_times_comment_entries_and_display_names(alpha, epsilon):
    root = alpha[0]
    performer = root.find("h:documentationOf/h:serviceEvent/h:performer", V3)
    assert performer.find("h:time/h:high", V3).get("value") == "20250310114000+0100"         # validation time
    assert root.find("h:confidentialityCode", V3).get("displayName") == "Normal"
    assert root.find("h:author/h:assignedAuthor/h:code", V3).get("displayName") == "Médecin - Biologie médicale (SM)"
    setting = root.find(".//h:standardIndustryClassCode", V3)
    assert (setting.get("code"), setting.get("displayName")) == ("AMBULATOIRE", "Ambulatoire")
    facility = root.find("h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code", V3)
    assert facility.get("displayName") == "Laboratoire de biologie médicale"
    comment = observations(root)["777-3"].find("h:entryRelationship/h:act", V3)
    assert {t.get("root") for t in comment.iterfind("h:templateId", V3)} == {
        "1.3.6.1.4.1.19376.1.5.3.1.4.2", "2.16.840.1.113883.10.20.1.40", "1.2.250.1.213.1.1.3.32"}
    ref = comment.find("h:text/h:reference", V3).get("value")[1:]
    assert root.xpath(f"string(//h:content[@ID='{ref}'])", namespaces=V3).startswith("Thrombopénie")
    battery = epsilon[0].find(".//h:organizer[@classCode='BATTERY']", V3)        # the NTE after OBR 1: its note
    ref = battery.find("h:component/h:act/h:text/h:reference", V3).get("value")[1:]
    assert epsilon[0].xpath(f"string(//h:content[@ID='{ref}'])", namespaces=V3) == (
        "Patient à jeun depuis 12 h & sans traitement.")


# ------------------------------------------------------------------ 7. PDF letters: the metadata model


def _letter(registry, *parts, account=None, headers=""):
    return cda_of(registry, "pdf_to_cda_n1_xdm", mail((make_pdf(), "application/pdf", "l.pdf"), *parts,
                                                      headers=headers), account)


def test_nested_metadata_with_iso_dates_ids_gp_and_identity(registry):
    root, _ = _letter(registry, (corpus("letter_nested.json"), "application/json", "m.json"))
    assert root.find("h:id", V3).attrib == {"root": "1.2.250.1.999.77.2", "extension": "DOC-2025-000123"}
    assert root.find("h:setId", V3).attrib == {"root": "1.2.250.1.999.77.3", "extension": "SET-2025-000123"}
    assert root.find("h:versionNumber", V3).get("value") == "2"
    assert root.find("h:effectiveTime", V3).get("value") == "20250402151200+0200"
    assert root.find("h:author/h:time", V3).get("value") == "20250402145500+0200"
    patient = root.find("h:recordTarget/h:patientRole", V3)
    assert [i.get("extension") for i in patient.iterfind("h:id", V3)] == ["185057511212345", "IPP-88776"]
    assert patient.find("h:patient/h:birthplace//h:county", V3).text == "75111"
    assert {(g.get("qualifier"), g.text) for g in patient.iterfind("h:patient/h:name/h:given", V3)} == {
        (None, "JEAN PIERRE ANDRE"), ("BR", "JEAN"), ("CL", "JP")}
    gp = root.find("h:participant[@typeCode='INF']/h:associatedEntity", V3)
    assert gp.find("h:id", V3).get("extension") == "810003456789"
    assert root.find("h:componentOf/h:encompassingEncounter/h:id", V3).get("extension") == "SEJ-55"


def test_a_hospitals_own_json_through_its_sender_mapping(registry):
    root, _ = _letter(registry, (corpus("letter_hospital.json"), "application/json", "m.json"), account="ch-nord")
    assert root.find("h:id", V3).attrib == {"root": "1.2.250.1.999.88.2", "extension": "CR-991"}
    patient = root.find("h:recordTarget/h:patientRole", V3)
    assert patient.find("h:id", V3).get("extension") == "280037512345678"
    assert patient.find("h:patient/h:name/h:family[@qualifier='BR']", V3).text == "MARTIN-ESSAI"
    assert patient.find("h:patient/h:name/h:given", V3).text == "SOPHIE ANNE"
    assert patient.find("h:patient/h:birthTime", V3).get("value") == "19800315"
    assert root.find("h:custodian//h:name", V3).text == "Hôpital Essai Nord"


def test_without_its_mapping_the_hospitals_json_is_refused_with_what_is_missing(registry):
    with pytest.raises(ParseError, match="missing document metadata: patient_family, patient_birth_date"):
        _letter(registry, (corpus("letter_hospital.json"), "application/json", "m.json"))


def test_an_mdm_t02_carrying_the_pdf_is_a_letter(registry):
    pdf = make_pdf(2500)
    root, out = cda_of(registry, "pdf_to_cda_n1_xdm", mail((mdm_t02(pdf), "application/hl7-v2", "l.hl7")),
                       "ch-nord")
    assert base64.b64decode(root.find("h:component/h:nonXMLBody/h:text", V3).text) == pdf
    assert root.find("h:id", V3).attrib == {"root": "1.2.250.1.999.88.2", "extension": "DOC-991"}
    assert root.find("h:author/h:assignedAuthor/h:id", V3).get("extension") == "810101234567"
    assert root.find("h:documentationOf/h:serviceEvent/h:effectiveTime/h:high", V3).get("value").startswith(
        "20250402110000")
    assert root.find(".//h:birthplace//h:county", V3).text == "75111"


@pytest.mark.parametrize("written, sex", [("F", "F"), ("f", "F"), ("Femme", "F"), ("Féminin", "F"), ("2", "F"),
                                           ("H", "M"), ("Homme", "M"), ("MASCULIN", "M"), ("1", "M"),
                                           ("Inconnu", "U"), ("I", "U"), ("Indéterminé", "U")])
def test_the_sex_as_hospitals_software_writes_it(registry, written, sex):
    """French DPIs write the sex as H/F, 1/2 or words: each was refused as "sex must be M, F or U"."""
    import json
    meta = json.loads(corpus("letter_flat.json"))
    root, _ = _letter(registry, (json.dumps({**meta, "patient_sex": written}).encode(), "application/json", "m"))
    gender = root.find("h:recordTarget/h:patientRole/h:patient/h:administrativeGenderCode", V3)
    assert gender.get("code") == ("UN" if sex == "U" else sex)


def test_a_json_in_windows_1252_or_with_a_bom_is_read(registry):
    """JSON is UTF-8, but Windows software writes a BOM, or Windows-1252: both were refused ("not valid: 'utf-8'
    codec can't decode"); read by the same rule as lab files (UTF-8 when it decodes, else ISO-8859-1 /
    Windows-1252). A control character is still refused."""
    import json
    meta = {**json.loads(corpus("letter_flat.json")), "patient_family": "LEFÈVRE-ŒUVRE"}
    text = json.dumps(meta, ensure_ascii=False)
    for data in (text.encode("cp1252"), b"\xef\xbb\xbf" + text.encode("utf-8")):
        root, _ = _letter(registry, (data, "application/json", "m.json"))
        assert root.find(".//h:patient/h:name/h:family", V3).text == "LEFÈVRE-ŒUVRE"
    with pytest.raises(ParseError) as err:
        _letter(registry, (text.replace("LEF", "LE\x01F").encode(), "application/json", "m.json"))
    assert err.value.where == "metadata.json" and "U+0001" in str(err.value) and "LEF" not in str(err.value)


@pytest.mark.parametrize("field, value, where", [
    ("patient_birth_date", "1979-02-30", "metadata.patient_birth_date"),
    ("effective_time", "2025-04-02T25:00:00", "metadata.effective_time"),
    ("patient_birth_place_cog", "Paris", "metadata.patient_birth_place_cog"),
    ("patient_ins", "27903512151898", "metadata.patient_ins"),
])
def test_bad_metadata_values_name_their_key_and_not_their_value(registry, field, value, where):
    import json
    meta = json.loads(corpus("letter_flat.json"))
    meta[field] = value
    with pytest.raises(ParseError) as err:
        _letter(registry, (json.dumps(meta).encode(), "application/json", "m.json"))
    assert err.value.where == where and value not in str(err.value)


def test_coded_values_are_checked_and_labelled_from_the_ans_value_set_files(loinc_csv):
    from tx_support import SCHEMATRONS
    import json
    registry = build_registry(TransformSection(cda_schema=str(XSD), value_sets=[
        str(SCHEMATRONS / "profils" / "structurationMinimale" / "include")]), "NIL")
    assert registry.context.value_sets.loaded
    meta = json.loads(corpus("letter_flat.json"))
    root, _ = _letter(registry, (json.dumps({**meta, "facility_code": "SA29"}).encode(), "application/json", "m"))
    facility = root.find("h:componentOf/h:encompassingEncounter/h:location/h:healthCareFacility/h:code", V3)
    assert facility.get("displayName") == "Laboratoire d'analyses et de biologie médicale"
    assert root.find("h:author/h:assignedAuthor/h:code", V3).get("displayName") == "Médecin - Cardiologie et maladies vasculaires (SM)"
    with pytest.raises(ParseError) as err:
        _letter(registry, (json.dumps({**meta, "facility_code": "NOPE"}).encode(), "application/json", "m"))
    assert err.value.where == "metadata.facility_code"


# ------------------------------------------------------------------ 8. per-sender constants


def test_the_sender_profile_gives_the_labs_constants_and_a_rule_overrides_them(registry):
    root, _ = cda_of(registry, "hprim_to_cda_xdm", mail((corpus("hs_alpha_hemato.hpr"), "text/plain", "a.hpr")),
                     "labo-alpha")
    org = root.find("h:custodian/h:assignedCustodian/h:representedCustodianOrganization", V3)
    assert org.find("h:id", V3).get("extension") == "1690000001"
    assert org.find("h:name", V3).text == "Laboratoire Alpha Biologie"
    assert org.find("h:telecom", V3).get("value") == "tel:+33472000000"
    assert root.find("h:documentationOf/h:serviceEvent/h:code", V3).get("code") == "18723-7"   # profile chapter
    assert root.find("h:recordTarget/h:patientRole/h:id", V3).get("root") == "1.2.250.1.213.1.4.10"   # INS policy
    root, _ = cda_of(registry, "hprim_to_cda_xdm", mail((corpus("hs_alpha_hemato.hpr"), "text/plain", "a.hpr")),
                     "labo-alpha", {"metadata": {"org_name": "Alpha - site de Bron"}, "chapter": "18719-5"})
    assert root.find("h:custodian//h:name", V3).text == "Alpha - site de Bron"
    assert root.find("h:documentationOf/h:serviceEvent/h:code", V3).get("code") == "18719-5"


def test_an_ins_policy_of_none_never_sends_the_labs_nir_as_a_qualified_ins(registry):
    data = corpus("hs_beta_biochimie.hpr").replace(b"P|1|PB77|B250311077||", b"P|1|PB77|B250311077|272093069123456|")
    root, out = cda_of(registry, "hprim_to_cda_xdm", mail((data, "text/plain", "b.hpr")), "labo-beta")
    assert all(i.get("root") != "1.2.250.1.213.1.4.10" for i in root.iterfind("h:recordTarget//h:id", V3))
    assert out.patient_ins_oid is None


def test_the_shipped_json_schema_is_the_model_the_hub_reads():
    import json
    from pathlib import Path

    import jsonschema

    import hub.transform
    from hub.transform.parse.metadata import MODEL

    schema = json.loads((Path(hub.transform.__file__).parent / "data" / "document-metadata.schema.json")
                        .read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator.check_schema(schema)

    def leaves(node, prefix=""):
        for key, sub in node.get("properties", {}).items():
            path = f"{prefix}{key}"
            if sub.get("type") == "object" and "properties" in sub:
                yield from leaves(sub, path + ".")
            else:
                yield path
    assert set(leaves(schema)) == set(MODEL)
    validator = jsonschema.Draft202012Validator(schema)
    for example in schema["examples"] + [json.loads(corpus("letter_nested.json"))]:
        assert not list(validator.iter_errors(example))


@pytest.mark.parametrize("written, birth, effective", [
    ("15.03.1979", "19790315", None), ("15-03-1979", "19790315", None), ("5/3/1979", "19790305", None),
    ("02/04/2025 15:12", None, "20250402151200+0200"), ("02.04.2025 15h12", None, "20250402151200+0200"),
    ("02-04-2025 15:12:30", None, "20250402151230+0200")])
def test_dates_written_the_french_way_day_first(registry, written, birth, effective):
    """A French DPI exports `15.03.1979` or `02/04/2025 15:12`: refused before (only dd/mm/yyyy, for the birth date);
    read day first with a four-digit year, local time."""
    import json
    meta = json.loads(corpus("letter_flat.json"))
    key = "patient_birth_date" if birth else "effective_time"
    root, _ = _letter(registry, (json.dumps({**meta, key: written}).encode(), "application/json", "m.json"))
    if birth:
        assert root.find(".//h:patient/h:birthTime", V3).get("value") == birth
    else:
        assert root.find("h:effectiveTime", V3).get("value") == effective


@pytest.mark.parametrize("written", ["15/03/79", "03/15/1979", "1979-3-5", "31/02/1979", "le 15 mars"])
def test_dates_that_are_ambiguous_or_impossible_are_refused_naming_the_key(registry, written):
    import json
    meta = json.loads(corpus("letter_flat.json"))
    with pytest.raises(ParseError) as err:
        _letter(registry, (json.dumps({**meta, "patient_birth_date": written}).encode(), "application/json", "m"))
    assert err.value.where == "metadata.patient_birth_date" and written not in str(err.value)
