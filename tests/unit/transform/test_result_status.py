"""Result and report statuses, abnormal flags and file references as a new laboratory sends them: what the GP's
software files must say what the laboratory said (a preliminary result, results to come, a cancelled or withdrawn
result), and every document produced here passes the CDA schema and the ANS schematrons with no failed assertion
(the `conformant` registry holds any document that fails one: `apply` would raise).

Fictitious laboratory "Kappa", patient LEFEBVRE-ESSAI Camille with a test INS (OID 1.2.250.1.213.1.4.10)."""

from __future__ import annotations

import pytest
from lxml import etree
from tx_support import NOW, NS, convert, corpus, kappa, mail, narrative, pdf_copy

from hub.errors import ParseError
from hub.transform.parse.hl7v2 import parse_er7, read_lab_oru
from hub.transform.parse.hprim import parse_hprim_net, parse_hprim_sante

def statuses(root) -> tuple[str, str, list[str], dict[str, str]]:
    """(serviceEvent lab:statusCode, act statusCode, battery organizers' statusCodes, {LOINC: observation status})."""
    act = root.find(".//h:entry/h:act", NS)
    return (root.find("h:documentationOf/h:serviceEvent/lab:statusCode", NS).get("code"),
            act.find("h:statusCode", NS).get("code"),
            [o.find("h:statusCode", NS).get("code") for o in act.iterfind(".//h:organizer[@classCode='BATTERY']", NS)],
            {o.find("h:code", NS).get("code"): o.find("h:statusCode", NS).get("code")
             for o in act.iterfind(".//h:observation", NS)})


def test_a_final_report_is_completed_throughout(conformant):
    root, out = convert(conformant, kappa())
    assert statuses(root) == ("completed", "completed", ["completed", "completed"], {
        "2345-7": "completed", "2823-3": "completed", "6690-2": "completed", "777-3": "completed"})
    assert "partiel" not in narrative(root) and "partiel" not in pdf_copy(root)
    assert not any("partial report" in w for w in out.warnings)


def test_a_preliminary_result_makes_its_battery_and_the_report_active(conformant):
    """OBX-11 P: the value is there but not validated. CR-BIO allows only completed / aborted on an observation, so
    the observation is completed and its battery active (XD-LAB), the act and serviceEvent active (a partial
    report); the narrative and the PDF copy say "provisoire" and "Compte rendu partiel". Before: everything
    completed but the observation, written active, which fails the CR-BIO schematron: the report was held."""
    data = kappa("P", obx={"2823-3": "|5.9|mmol/L|3.5-5.0|H|||P|||20250402073000+0200"})
    root, out = convert(conformant, data)
    assert statuses(root) == ("active", "active", ["active", "completed"], {
        "2345-7": "completed", "2823-3": "completed", "6690-2": "completed", "777-3": "completed"})
    text = narrative(root)
    assert "Compte rendu partiel" in text and "provisoire" in text
    pdf = pdf_copy(root)
    assert "Compte rendu partiel" in pdf and "haut, provisoire" in pdf
    assert "partial report (a request or a result not final): sent as a partial report (active)" in out.warnings


def test_results_to_come_are_no_observation_and_say_en_cours(conformant):
    """OBX-11 I (specimen in the lab, result pending) with no value: not an observation (it has no result; completed
    would say it has one, aborted that it never will), a narrative row "en cours"; its battery and the report
    active. Before: an observation with an empty text value, written active (held by the CR-BIO schematron)."""
    data = kappa(obr2="I", obx={"777-3": "||G/L|150-400||||I|||20250402073000+0200"})
    root, _ = convert(conformant, data)
    assert statuses(root) == ("active", "active", ["completed", "active"], {
        "2345-7": "completed", "2823-3": "completed", "6690-2": "completed"})
    assert "Plaquettes" in narrative(root) and "en cours" in narrative(root)
    assert "en cours" in pdf_copy(root)


@pytest.mark.parametrize("obr25", ["A", "P", "I", "R", "S"])
def test_a_request_whose_results_are_not_all_there_makes_the_report_partial(conformant, obr25):
    """OBR-25 A (some, not all, results), P, I, R, S with every OBX final: the battery and the report are active,
    not filed as final. Before: completed."""
    root, _ = convert(conformant, kappa(obr2=obr25))
    assert statuses(root)[:3] == ("active", "active", ["completed", "active"])
    assert "Compte rendu partiel" in narrative(root) and "Compte rendu partiel" in pdf_copy(root)


def test_a_corrected_result_is_final_and_says_it_is_a_correction(conformant):
    """OBX-11 C: final (completed). The hub sends it as a new report (no RPLC of the one it corrects), so the GP
    may hold both: the narrative and the PDF copy mark it "résultat corrigé", and a warning says so. Before: a
    corrected value looked like any other, beside the earlier report holding the wrong one."""
    root, out = convert(conformant, kappa("C", obx={"2823-3": "|4.3|mmol/L|3.5-5.0|N|||C|||20250402073000+0200"}))
    assert statuses(root)[:3] == ("completed", "completed", ["completed", "completed"])
    assert "résultat corrigé" in narrative(root) and "r\\351sultat corrig\\351" in pdf_copy(root)
    assert any(w.startswith("corrected result(s) (OBX-11 C): sent as a new report") for w in out.warnings)


def test_a_cancelled_result_is_aborted_with_no_value_and_the_reason_in_the_narrative(conformant):
    """OBX-11 X (results cannot be obtained): the observation is aborted (XD-LAB: the result will never come), with
    no value, interpretation nor range; the narrative and the PDF say "non réalisé" with the lab's text. Before: an
    aborted observation whose value was the lab's text, as if it were the result."""
    data = kappa(obx={"2823-3": "|Prélèvement hémolysé||3.5-5.0||||X|||20250402073000+0200"})
    root, _ = convert(conformant, data)
    assert statuses(root)[:3] == ("completed", "completed", ["completed", "completed"])
    [k] = [o for o in root.iterfind(".//h:observation", NS) if o.find("h:code", NS).get("code") == "2823-3"]
    assert k.find("h:statusCode", NS).get("code") == "aborted"
    assert k.find("h:value", NS) is None and k.find("h:referenceRange", NS) is None
    assert "non réalisé" in narrative(root) and "Prélèvement hémolysé" in narrative(root)
    assert "non r\\351alis\\351" in pdf_copy(root)


def test_a_request_whose_every_result_was_cancelled_is_an_aborted_battery(conformant):
    """A coagulated sample: OBR-25 X and every OBX X. Each battery is aborted, each result aborted; the report is
    final (nothing more will come) and conformant."""
    cancelled = "|Prélèvement coagulé||||||X|||20250402073000+0200"
    root, _ = convert(conformant, kappa("X", "X", obx={c: cancelled for c in ("2345-7", "2823-3", "6690-2", "777-3")}))
    assert statuses(root) == ("completed", "completed", ["aborted", "aborted"], {
        "2345-7": "aborted", "2823-3": "aborted", "6690-2": "aborted", "777-3": "aborted"})


@pytest.mark.parametrize("status", ["D", "W"])
def test_a_deleted_or_wrong_result_is_never_shown_as_a_result(conformant, status):
    """OBX-11 D (deleted) / W (posted in error, e.g. another patient's): no observation and its value nowhere in
    the document (narrative, PDF copy); the narrative says "annulé par le laboratoire"; a warning. Before: an
    aborted observation (W: completed) carrying the value."""
    data = kappa(obx={"2823-3": f"|6.66|mmol/L|3.5-5.0|H|||{status}|||20250402073000+0200"})
    root, out = convert(conformant, data)
    assert "2823-3" not in statuses(root)[3]
    assert b"6.66" not in etree.tostring(root) and "6.66" not in pdf_copy(root)
    assert "annulé par le laboratoire" in narrative(root)
    assert any(w.startswith("result '2823-3' has status") for w in out.warnings)


def test_a_result_not_asked_is_left_out_with_a_warning(conformant):
    """OBX-11 N (not asked: the battery implied it, the prescriber did not ask for it): not a result of the report.
    Before: a completed observation with whatever OBX-5 held."""
    root, out = convert(conformant, kappa(obx={"777-3": "|||150-400||||N|||20250402073000+0200"}))
    assert "777-3" not in statuses(root)[3] and "Plaquettes" not in narrative(root)
    assert "result '777-3' has status 'N' (not asked): not sent as a result" in out.warnings


def test_a_report_with_every_result_still_to_come_is_refused():
    """Nothing to file: an ORU whose every OBX is pending is a ParseError, never an empty report filed as one."""
    from tx_support import CORPUS, XSD

    from hub.settings import TransformSection
    from hub.transform import build_registry

    registry = build_registry(TransformSection(cda_schema=str(XSD), senders=str(CORPUS / "senders.toml")), "NIL")
    pending = "||G/L|||||I"
    data = kappa("I", "I", obx={c: pending for c in ("2345-7", "2823-3", "6690-2", "777-3")})
    with pytest.raises(ParseError) as err:
        registry.apply("hl7_oru_to_cda_xdm", mail((data, "application/hl7-v2", "r.hl7")), {"now": NOW},
                       account="labo-alpha")
    assert err.value.where == "OBX-11" and "no result to file" in str(err.value)


@pytest.mark.parametrize("edit, where", [
    (lambda d: d.replace(b"|N|||F|||20250402073000+0200\rOBX|2|NM|2823-3", b"|N|||Z|||20250402073000+0200\r"
                                                                          b"OBX|2|NM|2823-3"), "OBX[1].11"),
    (lambda d: d.replace(b"|||F|||||||10101234567", b"|||Y|||||||10101234567", 1), "OBR[1].25")])
def test_a_status_the_hub_does_not_know_is_refused_never_read_as_final(edit, where):
    with pytest.raises(ParseError) as err:
        read_lab_oru(parse_er7(edit(kappa())))
    assert err.value.where == where and "is not a status of HL7 table" in str(err.value)


def test_hprim_sante_request_and_result_statuses_are_read(conformant):
    """HPRIM Santé OBR-25 and OBX-11 use the same letters: a preliminary result (P) of the NFS makes its battery
    and the report partial; a result status the hub does not know is refused."""
    data = corpus("hs_alpha_hemato.hpr").replace(b"|L|||F|||202503100900", b"|L|||P|||202503100900")
    root, _ = convert(conformant, data, "hprim_to_cda_xdm")
    assert statuses(root)[:3] == ("active", "active", ["active", "completed"])
    lines = corpus("hs_alpha_hemato.hpr").split(b"\r\n")
    [n] = [i for i, line in enumerate(lines) if line.startswith(b"OBR|2|")]
    fields = lines[n].split(b"|")
    fields[25] = b"A"                                   # some, not all, results: the CRP request is not final
    data = b"\r\n".join(lines[:n] + [b"|".join(fields)] + lines[n + 1:])
    root, _ = convert(conformant, data, "hprim_to_cda_xdm")
    assert statuses(root)[:3] == ("active", "active", ["completed", "active"])
    with pytest.raises(ParseError) as err:
        parse_hprim_sante(corpus("hs_alpha_hemato.hpr").replace(b"|N|||F|||202503100900", b"|N|||Q|||202503100900", 1))
    assert err.value.where == "OBX[1].11"
    [net] = parse_hprim_net(corpus("hn_delta.txt").replace(b"|N|F\r\n", b"|N|P\r\n", 1))
    assert net.partial


# ------------------------------------------------------------------ abnormal flags (OBX-8 repeats)


@pytest.mark.parametrize("flags, codes", [("H~A", ["H", "A"]), ("A~HH", ["A", "HH"]), ("HH~HH", ["HH"]),
                                          ("H~XX", ["H"])])
def test_every_repeated_abnormal_flag_is_an_interpretation_code(conformant, flags, codes):
    """OBX-8 repeats (IS, 0..*; the lab observation's interpretationCode is 0..* in XD-LAB and no ANS rule limits
    it): one interpretationCode per flag of the ANS value set, in order, each once. Before: the whole `H~A` was one
    unknown flag (no interpretationCode, a warning), so a high potassium went out uninterpreted."""
    root, out = convert(conformant, kappa(obx={"2823-3": f"|5.9|mmol/L|3.5-5.0|{flags}|||F|||20250402073000+0200"}))
    [k] = [o for o in root.iterfind(".//h:observation", NS) if o.find("h:code", NS).get("code") == "2823-3"]
    assert [i.get("code") for i in k.iterfind("h:interpretationCode", NS)] == codes
    assert ("flag 'XX' of '2823-3' is not an HL7 interpretation code: written in the narrative only"
            in out.warnings) == ("XX" in flags)
    assert not any("'H~" in w or "'A~" in w for w in out.warnings)


def test_hprim_repeated_flags_are_each_read():
    data = corpus("hs_alpha_hemato.hpr").replace(b"|150 - 400|L|||F", b"|150 - 400|L^A|||F")
    [report] = parse_hprim_sante(data)
    assert [r.flags for r in report.results if r.local_code == "PLQ"] == [("L", "A")]


# ------------------------------------------------------------------ HPRIM file references (OBX type FIC)


def test_an_hprim_file_reference_is_not_sent_as_a_result_value(conformant):
    """HPRIM OBX type FIC names a file the lab sends apart (an electrophoresis image, a PDF): its value is a file
    name, not a result. No observation, its name nowhere in the document, the narrative says "fichier du
    laboratoire, non transmis", and a warning. Before: an observation whose text value was the file name."""
    data = corpus("hs_alpha_hemato.hpr").replace(
        b"C|1|L|R\xe9sultats", b"OBX|3|FIC|EPP~Electrophor\xe8se des prot\xe9ines~L||EPP_A25031000102.PDF||||||F\r\n"
                               b"C|1|L|R\xe9sultats").replace(b"L|1||1|13", b"L|1||1|14")
    root, out = convert(conformant, data, "hprim_to_cda_xdm")
    assert b"EPP_A25031000102" not in etree.tostring(root) and "EPP_A25031000102" not in pdf_copy(root)
    assert "EPP" not in [c.get("code") for c in root.iterfind(".//h:observation/h:code/h:translation", NS)]
    assert "Electrophorèse des protéines" in narrative(root) and "fichier du laboratoire, non transmis" in \
        narrative(root)
    assert ("result 'EPP' is a file reference (OBX type FIC): the file is not part of the report; not sent as a "
            "result value") in out.warnings
