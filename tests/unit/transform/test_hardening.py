"""Bad document text (issue #11, items 5 and 8, in the transformations): NUL and other text PostgreSQL cannot store
never reach what a step records; a malformed field of any lab input is a ParseError naming where, never another
exception (fuzzed with hypothesis); messages never quote a patient's values."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from tx_support import NOW, corpus, make_pdf, mail, mdm_t02

from hub.errors import ParseError
from hub.transform.parse.cisis import read_cisis
from hub.transform.parse.hl7v2 import parse_er7, read_lab_oru
from hub.transform.parse.hprim import parse_hprim_net, parse_hprim_sante
from hub.transform.parse.mdm import read_mdm
from hub.transform.parse.text import clean
from hub.transform.steps import Steps


@pytest.mark.parametrize("name, marker", [("hs_alpha_hemato.hpr", b"OBX|2|"), ("oru_epsilon.hl7", b"OBX|2|"),
                                          ("hn_delta.txt", b"RES|Cr")])
def test_a_nul_byte_in_a_lab_file_is_refused_naming_its_line(registry, name, marker):
    data = corpus(name).replace(marker, marker + b"\x00", 1)
    chain = "hl7_oru_to_cda_xdm" if name.endswith(".hl7") else "hprim_to_cda_xdm"
    with pytest.raises(ParseError) as err:
        registry.apply(chain, mail((data, "text/plain", name)), {"now": NOW})
    assert "control character U+0000" in str(err.value) and err.value.where.startswith("line ")
    assert "\x00" not in str(err.value)


def test_a_nul_in_metadata_json_is_refused_naming_its_key(registry):
    meta = json.loads(corpus("letter_flat.json"))
    meta["patient_family"] = "PAT\u0000TROIS"
    with pytest.raises(ParseError) as err:
        registry.apply("pdf_to_cda_n1_xdm", mail((make_pdf(), "application/pdf", "l.pdf"),
                                                 (json.dumps(meta).encode(), "application/json", "m.json")),
                       {"now": NOW})
    assert err.value.where == "metadata.patient_family" and "\x00" not in str(err.value)


def test_what_a_step_records_is_storable_text():
    steps = Steps()
    steps.add("x", "1", b"a", b"b", "invalid: bad \x00 value \udc80", ["unit '\x00' \ud800 unknown"])
    [record] = steps.records
    for text in (record.validation, *record.warnings):
        assert "\x00" not in text and not any(0xD800 <= ord(c) <= 0xDFFF for c in text)
        text.encode("utf-8")                     # what PostgreSQL stores
    assert clean("x" * 5000).endswith("…") and len(clean("x" * 5000)) == 2000


@pytest.mark.parametrize("data, where, secret", [
    (corpus("hs_gamma_serologie.hpr").replace(b"19800315", b"19801315"), "P[1].7", "19801315"),
    (corpus("oru_epsilon.hl7").replace(b"279035121518989^", b"27903512151898^"), "PID[1].3", "27903512151898"),
    (corpus("oru_epsilon.hl7").replace(b"|19790328|F|", b"|19790230|F|"), "PID[1].7", "19790230"),
    (corpus("oru_epsilon.hl7").replace(b"^BDL^^51215", b"^BDL^^DOMPREMY"), "PID[1].11", "DOMPREMY"),
])
def test_parse_errors_name_the_field_and_never_quote_the_patients_value(data, where, secret):
    with pytest.raises(ParseError) as err:
        (parse_hprim_sante if data.startswith(b"H|") else lambda d: read_lab_oru(parse_er7(d)))(data)
    assert err.value.where == where and secret not in str(err.value)


ORU_HEAD = b"MSH|^~\\&|A|B|C|D|20250101||ORU^R01|1|P|2.5\rPID|1||P1^^^L^PI||X^Y^^^^^L\rOBR|1|A|B|X^Y^L\r"


@pytest.mark.parametrize("obx", [
    b"OBX|||E^^^",                                                               # the short OBX-3 of issue #11
    b"OBX|1|NM|CHOL^Cholest\xc3\xa9rol total^L^2093-3^Cholest\xc3\xa9rol total^LN||1,85|g/l||N|||",
    b"OBX|1|NM|^^LN||1|g/l||||||F",
    b"OBX|1|NM|2093-3^^LN^^^^^^^^^^||1|g/l||||||F|||notadate",
    b"OBX|1|NM|2093-3^^LN||1|g/l||||||F|||||||||20251399",
])
def test_malformed_obx_fields_are_parse_errors_naming_segment_and_field(obx):
    with pytest.raises(ParseError) as err:
        read_lab_oru(parse_er7(ORU_HEAD + obx + b"\r"))
    assert err.value.where and err.value.where.startswith("OBX[1].")


def test_the_local_first_loinc_variant_of_issue_11_is_read():
    obx = b"OBX|1|NM|CHOL^Cholest\xc3\xa9rol total^L^2093-3^Cholest\xc3\xa9rol total^LN||1,85|g/l||N|||F"
    [res] = read_lab_oru(parse_er7(ORU_HEAD + obx)).results
    assert (res.loinc, res.local_code, res.value) == ("2093-3", "CHOL", "1.85")


# ------------------------------------------------------------------ fuzzing: only ParseError may escape

def _readers():
    return {
        "hs_alpha_hemato.hpr": parse_hprim_sante, "hs_beta_biochimie.hpr": parse_hprim_sante,
        "hs_gamma_serologie.hpr": parse_hprim_sante, "hn_delta.txt": parse_hprim_net,
        "oru_epsilon.hl7": lambda d: read_lab_oru(parse_er7(d)),
        "oru_phi_lipides.hl7": lambda d: read_lab_oru(parse_er7(d)),
        "mdm": lambda d: read_mdm(parse_er7(d)), "cisis": lambda d: read_cisis(parse_er7(d)),
    }


_SAMPLES = {**{n: corpus(n) for n in _readers() if "." in n}, "mdm": mdm_t02(make_pdf(300)),
            "cisis": corpus("oru_epsilon.hl7").replace(b"|NM|2345-7", b"|ED|2345-7", 1)}
_PIECES = st.sampled_from([b"|", b"^", b"~", b"&", b"\\", b"\r", b"\n", b"", b"A|", b"L|1", b"99999999",
                           b"-", b"<", b">", b"1,5", b"G/l", b"\xff", b"\xc3", b"2025-13-45", b"^^^^^^", b"LN",
                           b"****FIN****", b"ED", b"OBX|", b"\\X0D\\", b"\\.br\\"])


@st.composite
def _mutated(draw):
    name = draw(st.sampled_from(sorted(_SAMPLES)))
    data = bytearray(_SAMPLES[name])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 12))
        data[at:at + cut] = draw(_PIECES) if draw(st.booleans()) else draw(st.binary(max_size=6))
    if draw(st.booleans()):
        data = data[:draw(st.integers(0, len(data)))]
    return name, bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutated())
def test_fuzzed_lab_inputs_give_a_result_or_a_parse_error_never_another_exception(case):
    name, data = case
    try:
        _readers()[name](data)
    except ParseError as exc:
        assert exc.where is None or isinstance(exc.where, str)


def test_a_schema_error_on_a_senders_cda_does_not_quote_its_values(registry):
    from tx_support import sample

    from hub.errors import TransformError

    cda = sample("cda/DOC_NON_STRUCTURE_CDA-R2-N1.xml").replace(b'<birthTime value="19790328"/>',
                                                               b'<birthTime value="1979-03-28 PAT-TROIS"/>')
    assert b"1979-03-28 PAT-TROIS" in cda
    with pytest.raises(TransformError) as err:
        registry.apply("cda_to_xdm", mail((cda, "text/xml", "d.xml")), {"now": NOW})
    assert "birthTime" in err.value.validation and "'…'" in err.value.validation
    assert "PAT-TROIS" not in err.value.validation and "PAT-TROIS" not in str(err.value)
