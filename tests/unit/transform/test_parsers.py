"""HPRIM Santé, HPRIM Net, HL7 v2 and CI-SIS parsers on the shared samples and on hand-written edge cases."""

from __future__ import annotations

import base64

import pytest
from tx_support import sample

from hub.errors import ParseError
from hub.transform.parse.cisis import build_ack, read_cisis
from hub.transform.parse.hl7v2 import parse_er7, read_patient
from hub.transform.parse.hprim import parse_hprim_net, parse_hprim_sante
from hub.transform.terminology.loinc import LoincMap
from hub.transform.terminology.units import to_ucum


def test_hprim_sante_sample_values():
    [rep] = parse_hprim_sante(sample("hprim/synthetic_hprim_sante_2.2_ORU.hpr"))
    assert rep.patient.family == "NAISSANCE" and rep.patient.used_family == "TESTPATIENT"
    assert (rep.patient.given, rep.patient.birth_date, rep.patient.sex) == ("MARIE", "19800214", "F")
    assert rep.sender.local_code == "LBM01" and rep.sender.org_name == "LABORATOIRE EXEMPLE LYON"
    assert rep.order_id == "25011500123" and rep.collected_at == "202501150745"
    gly, crea = rep.results
    assert (gly.local_code, gly.label, gly.value, gly.unit) == ("GLY", "Glycémie à jeun", "5.40", "mmol/l")
    assert (gly.range_low, gly.range_high, gly.flag, gly.observed_at) == ("4.10", "5.90", "N", "202501151000")
    assert (crea.unit, crea.flag, crea.comments) == ("µmol/l", "H", ("Résultat contrôlé.",))


def test_hprim_net_sample_values():
    [rep] = parse_hprim_net(sample("hprim/synthetic_hprim_net_biologie.txt"))
    assert rep.patient.ins == "280026912345678" and rep.patient.ins_oid == ""
    assert (rep.patient.family, rep.patient.sex, rep.patient.birth_date) == ("TESTPATIENT", "F", "19800214")
    assert rep.report_date == "20250115" and rep.receiver.local_code == "DRGEN01"
    assert [r.local_code for r in rep.results] == ["GLY", "CREA"]
    assert rep.results[1].range_low == "45" and rep.results[1].range_high == "90"
    assert "Résultat contrôlé." in rep.comments


HPRIM_A = (b"H|~^\\&|F.HPR||LAB~LABO CONT||ORU|||DR~DOCTEUR||P|H2.2~C|202501151030\r"
           b"P|1|ID1|F1||DUPONT~JEAN||19700101|M\r"
           b"OBR|1||~42|X~Y~L|R||202501150745\r"
           b"OBX|1|NM|K~Potass\rA|ium~L||4,1|mmol/l|3.5 - 5.0|N|||F\r"
           b"L|1\r")


@pytest.mark.parametrize("sep", [b"\r", b"\n", b"\r\n"])
def test_hprim_sante_continuation_and_line_endings(sep):
    [rep] = parse_hprim_sante(HPRIM_A.replace(b"\r", sep))
    [res] = rep.results
    assert (res.label, res.value, res.code_system) == ("Potassium", "4.1", "L")


def test_hprim_sante_reads_delimiters_from_h():
    data = (b"H|\\^&~|F||LAB\\NAME\r"                   # component "\", repetition "^", escape "&", sub "~"
            b"P|1|ID|||DUPONT\\JEAN||19700101|M\r"
            b"OBR|1\rOBX|1|ST|C\\Label\\L||positif\rL|1\r")
    [rep] = parse_hprim_sante(data)
    assert rep.patient.family == "DUPONT" and rep.patient.given == "JEAN"
    assert rep.results[0].label == "Label"


@pytest.mark.parametrize("data, where", [
    (b"P|1|x\r", "line 1"),
    (b"H|~^\\&\rOBX|1|NM|A~B~L||1\r", "line 2"),
    (b"H|~^\\&\rP|1|ID|||N~P||19801340|F\r", "P[1].7"),
    (b"H|~^\\&\rP|1|ID|||N~P||19800101|Z\r", "P[1].8"),
    (b"H|~^\\&\rP|1\rOBR|1\rOBX|1|NM|||1\r", "OBX[1].3"),
    (b"H|~^\\&\rP|1\rab cd\r", "line 3"),
    (b"H|aaaaa\r", "H.2"),
])
def test_hprim_sante_errors_are_precise(data, where):
    with pytest.raises(ParseError) as info:
        parse_hprim_sante(data)
    assert info.value.where == where


def test_hprim_net_errors_are_precise():
    lines = sample("hprim/synthetic_hprim_net_biologie.txt").split(b"\r\n")
    bad = b"\r\n".join(lines[:6] + [b"31/02/1980"] + lines[7:])
    with pytest.raises(ParseError) as info:
        parse_hprim_net(bad)
    assert info.value.where == "line 7"
    with pytest.raises(ParseError, match="FIN"):
        parse_hprim_net(b"\r\n".join(lines[:22]))
    bad_res = b"\r\n".join(lines[:20] + [b"RES|a|b|N|1|u|x|2"] + lines[21:])
    with pytest.raises(ParseError) as info:
        parse_hprim_net(bad_res)
    assert info.value.where == "line 21, field 6"


def test_loinc_map_and_ucum():
    m = LoincMap.from_csv_text("local_code,loinc_code,loinc_label\nGLY,14749-6,Glucose\n")
    [rep] = parse_hprim_sante(sample("hprim/synthetic_hprim_sante_2.2_ORU.hpr"))
    out, warnings = m.apply(rep)
    assert out.results[0].loinc == "14749-6" and out.results[0].ucum == "mmol/L"
    assert out.results[1].loinc == "" and out.results[1].ucum == "umol/L"
    assert warnings == ["unmapped local code 'CREA' kept with the laboratory's code system"]
    assert to_ucum("UI/ml") == "[IU]/mL" and to_ucum("unités arbitraires") is None


@pytest.mark.parametrize("data, where", [
    (b"PID|1\r", "line 1"),
    (b"MSH|^~\\&|A\rPID|||123^^^X&1.2.250.1.213.1.4.8&ISO^INS\r", "PID[1].3"),
    (b"MSH|^~\\&|A\rPID|||||N^P||19990231\r", "PID[1].7"),
    (b"MSH|^~\\&|A\rpid|1\r", "line 2"),
    (b"MSH|^^^^|A\r", "MSH.2"),
])
def test_hl7_errors_are_precise(data, where):
    with pytest.raises(ParseError) as info:
        read_patient(parse_er7(data))
    assert info.value.where == where


@pytest.mark.parametrize("sep", ["\n", "\r", "\r\n"])
def test_cisis_segur_sample(sep):
    raw = sample("hl7v2/message_ORU_CR_Bio_INIT_N3_SEGUR.hl7").replace(b"\n", sep.encode())
    msg = parse_er7(raw)
    patient = read_patient(msg)
    assert (patient.ins, patient.ins_oid) == ("279035121518989", "1.2.250.1.213.1.4.10")
    req = read_cisis(msg, patient.ins)
    [doc] = req.documents
    assert doc.doc_code == "11502-2" and doc.status == "F" and doc.cda.startswith(b"<?xml")
    assert len(doc.cda) > 200_000
    assert req.recipients == ("adam.hoda@test-ci-sis.mssante.fr", "27707279035121518989@patient.mssante.fr")
    assert req.reply_to == "adam.hoda@test-ci-sis.mssante.fr"
    assert req.flags["DESTMSSANTEPS"] == "Y" and req.flags["MASQUE_PS"] == "N"
    assert any("does not match the INS" in w for w in req.warnings)
    assert build_ack(msg, now="20250115103000").split(b"\r")[1] == b"MSA|AA|015"


def test_cisis_mdm_sample_hl70912_roles():
    msg = parse_er7(sample("hl7v2/message_MDM__LPS_MSS_CR_Radio_INIT_N1.er7"))
    req = read_cisis(msg)
    assert req.recipients == ("dpi@hopitalA.mssante.fr",)
    assert req.sender == "thomas.eric@medecin.mssante.fr"
    assert [d.doc_code for d in req.documents] == ["18748-4"]
    assert req.flags["INVISIBLE_PATIENT"] == "Y"


def _flags(**flags: str) -> bytes:
    cda = base64.b64encode(b"<x/>").decode()
    lines = ["MSH|^~\\&|A|B|C|D|20250101||ORU^R01^ORU_R01|9|P|2.5", "PID|||1^^^X^PI",
             f"OBX|1|ED|11502-2^CR^LN||^TEXT^XML^Base64^{cda}||||||F",
             "PRT||UC||RCT^^participation|||||||||||^^X.400^dr@x.mssante.fr",
             "PRT||UC||RCT^^participation|||||||||||^^X.400^279035121518989@patient.mssante.fr"]
    for n, (code, value) in enumerate(flags.items(), 2):
        lines.append(f"OBX|{n}|CE|{code}^x^MetaDMPMSS||{value}^^expandedYes-NoIndicator||||||F")
    return "\r".join(lines).encode()


def test_metadmpmss_combinations():
    ok = read_cisis(parse_er7(_flags(DESTMSSANTEPS="N", DESTMSSANTEPAT="Y", DESTDMP="N")))
    assert ok.recipients == ("279035121518989@patient.mssante.fr",)
    ps_only = read_cisis(parse_er7(_flags(DESTMSSANTEPS="Y", DESTMSSANTEPAT="N", INVISIBLE_PATIENT="Y")))
    assert ps_only.recipients == ("dr@x.mssante.fr",)
    with pytest.raises(ParseError) as info:
        read_cisis(parse_er7(_flags(MASQUE_PS="Y", DESTMSSANTEPS="Y", DESTMSSANTEPAT="Y")))
    assert info.value.where == "OBX[4].5"
    with pytest.raises(ParseError, match="DESTDMP=N"):
        read_cisis(parse_er7(_flags(DESTMSSANTEPS="N", DESTMSSANTEPAT="Y", DESTDMP="Y")))
    with pytest.raises(ParseError, match="Y or N"):
        read_cisis(parse_er7(_flags(DESTMSSANTEPS="peut-etre")))


def test_cisis_status_must_be_f_c_d():
    raw = _flags().replace(b"||||||F\rPRT", b"||||||X\rPRT", 1)
    with pytest.raises(ParseError) as info:
        read_cisis(parse_er7(raw))
    assert info.value.where == "OBX[1].11"
