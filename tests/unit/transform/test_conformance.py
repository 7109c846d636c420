"""CI-SIS conformance proven by the official ANS rules: every document the test corpus produces (CR-BIO N3 from each
lab input kind, with and without a PDF from the lab; LDL-SES N1 from each metadata form) passes the ANS volet and
profile schematrons with 0 failed assertions, and a deliberately broken document fails them.

The corpus (tests/unit/transform/corpus/) is fictitious: labs Alpha to Phi, hospital "CH Essai Nord", patients with
test INS under the test OID 1.2.250.1.213.1.4.10. The schematrons are compiled once per session (`conformant`)."""

from __future__ import annotations

import re

import pytest
from lxml import etree
from tx_support import MUTATIONS, NOW, V3, cdas, corpus, make_pdf, mail, mdm_t02, mutate, sample

from hub.errors import TransformError
from hub.settings import TransformSection
from hub.transform import build_registry
from hub.transform.validate.schematron import CRBIO, LDLSES, PROFILES
from tx_support import CORPUS, SCHEMATRONS, XSD

PDF = make_pdf(3000)
DELTA = ("X-Hub-Author-RPPS: 10101234567\r\nX-Hub-Author-Family: BIOLO\r\nX-Hub-Author-Given: Anne\r\n"
         "X-Hub-Org-FINESS: 310000019\r\nX-Hub-Org-Name: Laboratoire Delta\r\n"
         "X-Hub-Patient-INS-OID: 1.2.250.1.213.1.4.10\r\n")


def _cases():
    hpr = lambda name, *extra, **kw: mail((corpus(name), "text/plain", name), *extra, **kw)  # noqa: E731
    hl7 = lambda name, **kw: mail((corpus(name), "application/hl7-v2", name), **kw)  # noqa: E731
    pdf = (PDF, "application/pdf", "lettre.pdf")
    js = lambda name: (corpus(name), "application/json", "metadata.json")  # noqa: E731
    return [
        ("hprim_sante_alpha", "hprim_to_cda_xdm", hpr("hs_alpha_hemato.hpr"), "labo-alpha", "11502-2"),
        ("hprim_sante_alpha_with_lab_pdf", "hprim_to_cda_xdm", hpr("hs_alpha_hemato.hpr", (PDF, "application/pdf",
                                                                                            "cr.pdf")),
         "labo-alpha", "11502-2"),
        ("hprim_sante_beta_hl7_delimiters", "hprim_to_cda_xdm", hpr("hs_beta_biochimie.hpr"), "labo-beta", "11502-2"),
        ("hprim_sante_gamma_cr_latin1", "hprim_to_cda_xdm", hpr("hs_gamma_serologie.hpr"), "labo-gamma", "11502-2"),
        ("hprim_net_delta", "hprim_to_cda_xdm", hpr("hn_delta.txt", headers=DELTA), None, "11502-2"),
        ("hprim_net_delta_with_lab_pdf", "hprim_to_cda_xdm", hpr("hn_delta.txt", (PDF, "application/pdf", "c.pdf"),
                                                                 headers=DELTA), None, "11502-2"),
        ("oru_lab3_epsilon", "hl7_oru_to_cda_xdm", hl7("oru_epsilon.hl7"), None, "11502-2"),
        ("oru_lab3_phi_local_first", "hl7_oru_to_cda_xdm",
         hl7("oru_phi_lipides.hl7", headers="X-Hub-Author-RPPS: 10101234567\r\nX-Hub-Author-Family: BIOLO\r\n"),
         "labo-beta", "11502-2"),
        ("letter_flat_json", "pdf_to_cda_n1_xdm", mail(pdf, js("letter_flat.json")), None, "11490-0"),
        ("letter_nested_json", "pdf_to_cda_n1_xdm", mail(pdf, js("letter_nested.json")), None, "11490-0"),
        ("letter_hospital_json_mapped", "pdf_to_cda_n1_xdm", mail(pdf, js("letter_hospital.json")), "ch-nord",
         "11490-0"),
        ("letter_mdm_t02", "pdf_to_cda_n1_xdm", mail((mdm_t02(PDF), "application/hl7-v2", "lettre.hl7")),
         "ch-nord", "11490-0"),
    ]


CASES = _cases()


@pytest.mark.parametrize("name, chain, message, account, code", CASES, ids=[c[0] for c in CASES])
def test_every_corpus_document_passes_the_ans_schematrons(conformant, name, chain, message, account, code):
    out = conformant.apply(chain, message, {"now": NOW}, account=account)   # hold: a failed assertion raises
    [step] = [s for s in out.steps if s.name == "cda_schematron"]
    assert step.validation == "conformant (5 schematrons)"
    [doc] = cdas(out.message)
    root = etree.fromstring(doc)
    assert root.find("h:code", V3).get("code") == code
    result = conformant.context.schematrons.check(doc, [t.get("root") for t in root.iterfind("h:templateId", V3)],
                                                  code)
    assert result.checked == ((CRBIO if code == "11502-2" else LDLSES),) + PROFILES
    assert result.failures == ()


def test_a_cisis_oru_carrying_the_hubs_own_cr_bio_relays_it_conformant(conformant):
    out = conformant.apply("hl7_oru_to_cda_xdm", mail((corpus("oru_epsilon.hl7"), "application/hl7-v2", "e.hl7")),
                           {"now": NOW})
    [cda] = cdas(out.message)
    import base64
    oru = (b"MSH|^~\\&|SIL|LAB|HUB|X|20250314103000||ORU^R01^ORU_R01|C1|P|2.5|||||FRA|UNICODE UTF-8|||"
           b"2.1^CISIS_CDA_HL7_V2\rPID|||279035121518989^^^ASIP-SANTE-INS-NIR&1.2.250.1.213.1.4.10&ISO^INS||"
           b"PAT-TROIS^DOMINIQUE^^^^^L||19790328|F\rOBR|1|A|B|11502-2^CR d'examens biologiques^LN\r"
           b"OBX|1|ED|11502-2^CR d'examens biologiques^LN||^TEXT^XML^Base64^" + base64.b64encode(cda)
           + b"||||||F\rPRT||UC||RCT^^participation|||||||||||^^X.400^dr.house@medecin.mssante.fr\r")
    relayed = conformant.apply("cisis_hl7_to_xdm", mail((oru, "application/hl7-v2", "c.hl7")), {"now": NOW})
    [step] = [s for s in relayed.steps if s.name == "cda_schematron"]
    assert step.validation == "conformant (5 schematrons)" and cdas(relayed.message) == [cda]


@pytest.mark.parametrize("name", ["BIO-CR-BIO_2024.01_TSH_1.xml", "DOC_NON_STRUCTURE_CDA-R2-N1.xml",
                                  "LDL-SES_2022.01.xml"])
def test_the_ans_own_examples_pass_as_they_do_with_the_ans_engine(conformant, name):
    out = conformant.apply("cda_to_xdm", mail((sample(f"cda/{name}"), "text/xml", name)), {"now": NOW})
    [step] = [s for s in out.steps if s.name == "cda_schematron"]
    assert re.fullmatch(r"conformant \([45] schematrons\)", step.validation)   # N1 generic: profiles only


def test_a_deliberately_broken_document_fails_the_rules(conformant):
    out = conformant.apply("hprim_to_cda_xdm", mail((corpus("hs_alpha_hemato.hpr"), "text/plain", "a.hpr")),
                           {"now": NOW}, account="labo-alpha")
    [doc] = cdas(out.message)
    broken = re.sub(rb'<component><section><templateId root="1.2.250.1.213.1.1.2.243"/>.*?</section></component>',
                    b"", doc, flags=re.S).replace(b"<title>Compte rendu d'examens biologiques</title>",
                                                  b"<title>Resultats</title>")
    root = etree.fromstring(broken)
    result = conformant.context.schematrons.check(broken, [t.get("root") for t in root.iterfind("h:templateId", V3)],
                                                  "11502-2")
    rules = {(f.schematron, f.rule) for f in result.failures}
    assert (CRBIO, "Entete_CR-BIO") in rules and (CRBIO, "variables") in rules     # title; PDF-copy section
    assert all(f.location.startswith("/ClinicalDocument") for f in result.failures)


def test_a_non_conformant_document_is_held_with_rule_ids_and_no_patient_value(conformant):
    """Lab Gamma without its sender profile: no biologist RPPS, no FINESS: the CR-BIO cannot be conformant."""
    message = mail((corpus("hs_gamma_serologie.hpr"), "text/plain", "c.hpr"))
    with pytest.raises(TransformError) as err:
        conformant.apply("hprim_to_cda_xdm", message, {"now": NOW})
    exc = err.value
    assert exc.steps[-1].name == "cda_schematron" and exc.steps[-1].output_sha256 == ""
    assert re.match(r"invalid: \d+ failed assertion\(s\): ASIP-STRUCT-MIN-StrucMin\.sch:\S+ at /ClinicalDocument/",
                    exc.validation)
    for value in ("MARTIN-ESSAI", "SOPHIE", "19800315", "280037512345678", "Négatif"):
        assert value not in str(exc) and value not in exc.validation


def test_on_nonconformant_warn_sends_it_with_a_warning(loinc_csv):
    settings = TransformSection(cda_schema=str(XSD), loinc_map=str(loinc_csv), schematron_dir=str(SCHEMATRONS),
                                senders=str(CORPUS / "senders.toml"), on_nonconformant="warn")
    registry = build_registry(settings, "NIL")      # the compiled schematrons are reused (one per process)
    out = registry.apply("hprim_to_cda_xdm", mail((corpus("hs_gamma_serologie.hpr"), "text/plain", "c.hpr")),
                         {"now": NOW})
    [step] = [s for s in out.steps if s.name == "cda_schematron"]
    assert step.validation.startswith("invalid: ")
    assert any(w.startswith("sent although not conformant to the ANS schematrons") for w in out.warnings)
    assert len(cdas(out.message)) == 1


def test_the_optimised_validators_give_the_same_failed_assertions_as_the_skeletons_own(conformant):
    """The speed-ups (nodes selected instead of walked, shared assertions, patterns skipped when their templateIds
    are absent, doc() loaded once) never change a failed assertion: a fast sample of bench/schematron_verdicts.py
    (144 documents there), on mutated corpus documents, each kind of defect at least twice."""
    from hub.transform.validate.schematron import Schematrons

    sets = ("profils/IHE.sch", "profils/structurationMinimale/ASIP-STRUCT-MIN-StrucMin.sch")   # every speed-up
    plain = Schematrons(str(SCHEMATRONS), sets=sets, optimised=False)
    docs = []
    for name, chain, message, account, code in CASES[::4]:
        [doc] = cdas(conformant.apply(chain, message, {"now": NOW}, account=account).message)
        docs += [(code, mutate(doc, len(docs), MUTATIONS[len(docs) % len(MUTATIONS)])) for _ in range(8)]
    failing = 0
    for code, doc in docs:
        fast = conformant.context.schematrons.check(doc, (), code, only=sets)
        slow = plain.check(doc, (), code, only=sets)
        assert sorted(fast.failures, key=repr) == sorted(slow.failures, key=repr)
        failing += not fast.ok
    assert len(docs) == 24 and failing >= 8


def test_the_validators_run_in_their_own_process_and_come_back_if_it_dies(conformant):
    """SaxonC holds the GIL while it runs: the hub's validators live in a child process, so a check waits on a pipe
    and the event loop (SMTP intake) keeps running; a validator process that died is started again."""
    import os
    import signal

    from hub.transform.validate.schematron import IsolatedSchematrons

    assert isinstance(conformant.context.schematrons, IsolatedSchematrons)
    out = conformant.apply("hprim_to_cda_xdm", mail((corpus("hs_alpha_hemato.hpr"), "text/plain", "a.hpr")),
                           {"now": NOW}, account="labo-alpha")
    [doc] = cdas(out.message)
    assert len(set(conformant.context.schematrons.pids) - {None, os.getpid()}) == 2   # two validator processes
    volet = IsolatedSchematrons(str(SCHEMATRONS), sets=(CRBIO,))       # one set: quick to compile twice
    assert volet.check(doc, (), "11502-2", only=(CRBIO,)).ok
    [pid] = volet.pids
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert volet.check(doc, (), "11502-2", only=(CRBIO,)).ok                 # started again, compiled again
    assert volet.pids[0] not in (None, pid)
    volet.close()


def test_rules_that_produce_cdas_without_the_ans_rules_are_named(registry, conformant):
    """The shipped rules produce CR-BIO and N1 documents: without transform.schematron_dir the hub names those
    chains (start-up warning, /healthz, metric: tests/e2e/test_serve.py); with the rules, nothing to say."""
    from hub.rules.loader import compile_files, read_dir
    from hub.transform.registry import unchecked_chains
    from tx_support import REPO

    rules = compile_files(read_dir(str(REPO / "routing_rules")), registry.names())
    assert unchecked_chains(registry, rules) == ["cda_to_xdm", "cisis_hl7_to_xdm", "hl7_oru_to_cda_xdm",
                                                 "hprim_to_cda_xdm", "pdf_to_cda_n1_xdm"]
    assert unchecked_chains(conformant, rules) == []
