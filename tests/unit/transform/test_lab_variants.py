"""Lab files as a new laboratory writes them (QA as a new sender, laboratory "Kappa" and the corpus labs): long and
multi-line texts, character sets, results without a value, battery comments, structured numeric values. Each test
is a defect the variant showed and fails on the code before its fix; every document produced here passes the CDA
schema and the ANS schematrons with no failed assertion (`convert` uses the `conformant` registry)."""

from __future__ import annotations

import re

from lxml import etree
from tx_support import NS, convert, corpus, kappa, narrative, pdf_copy

from hub.transform.parse.hl7v2 import parse_er7, read_lab_oru
from hub.transform.parse.hprim import parse_hprim_sante

LONG = ("Valeur confirmée sur un second prélèvement ; à interpréter en fonction du traitement anticoagulant en cours "
        "et de la fonction rénale du patient (contrôle conseillé sous 48 heures).")


def _with(data: bytes, before: bytes, *segments: str) -> bytes:
    """`segments` inserted before the first occurrence of `before`."""
    return data.replace(before, "\r".join(segments).encode("utf-8") + b"\r" + before, 1)


def test_long_and_multi_line_texts_reach_the_pdf_copy_whole_and_the_narrative_line_by_line(conformant):
    """A comment longer than a PDF line was cut at 96 characters (a value at 44) in the hub's PDF copy, and the
    lines of a TX result (OBX-5 repeats, `\\.br\\`) ran into one line, in the narrative (a newline is no line break
    in a CDA narrative) and in the PDF (where the line break was drawn as a glyph across the next column)."""
    data = _with(kappa(), b"OBR|2|", f"NTE|1|L|{LONG}",
                 "OBX|3|TX|8251-1^Conclusion^LN||Absence de germe~Leucocytes < 10/mm3\\.br\\Hématies < 10/mm3||||||F")
    root, _ = convert(conformant, data)
    pdf = pdf_copy(root)
    words = [w.replace("(", "\\(").replace(")", "\\)") for w in LONG.split() if w.isascii()]  # (é is \351 there)
    assert all(w in pdf for w in words) and "heures\\)." in pdf          # every word, the last ones too
    assert re.search(r"\(    r\\351nale du patient|\(    [^)]*heures", pdf)          # the indent kept on its next lines
    assert "(Absence de germe) Tj" in pdf and "(Leucocytes < 10/mm3) Tj" in pdf and "(H\\351maties < 10/mm3) Tj" in pdf
    [cell] = [td for td in root.iterfind(".//h:section/h:component/h:section/h:text//h:td", NS)
              if (td.text or "").startswith("Absence de germe")]
    assert [cell.text] + [br.tail for br in cell.iterfind("h:br", NS)] == [
        "Absence de germe", "Leucocytes < 10/mm3", "Hématies < 10/mm3"]
    assert LONG in narrative(root)


def test_a_message_declaring_latin_9_is_read_as_latin_9():
    """MSH-18 `8859/15` (ISO-8859-15, the Latin-1 with œ and €): `œdème` was read `½dème`, `5 €` `5 ¤`."""
    oru = ("MSH|^~\\&|SIL-K|LABK|HUB|REGION|20250402101500||ORU^R01|K-2|P|2.5|||||FRA|8859/15\r"
           "PID|1||IPK-2^^^LABK^PI||LEFEBVRE-ESSAI^CAMILLE^^^^^L||19950714|F\r"
           "OBR|1|C1|L1|IONO^Ionogramme^L|||20250402070000\r"
           "NTE|1|L|Patiente sous diurétique (œdèmes) ; facturation 5 €\r"
           "OBX|1|ST|K^Potassium^L||Non rendu : sœur du prélèvement hémolysée||||||F\r").encode("iso-8859-15")
    report = read_lab_oru(parse_er7(oru))
    assert report.batteries[0].comments == ("Patiente sous diurétique (œdèmes) ; facturation 5 €",)
    assert report.results[0].value == "Non rendu : sœur du prélèvement hémolysée"
    latin1 = read_lab_oru(parse_er7(oru.replace(b"8859/15", b"8859/1")))         # as declared, ISO-8859-1
    assert latin1.batteries[0].comments[0].endswith("(½dèmes) ; facturation 5 ¤")


def test_a_line_without_any_value_is_no_result(conformant):
    """An OBX with no value (a title line `Formule leucocytaire`, or a value not given) went out as an observation
    whose value was empty, or the unit alone (`G/L`) with its reference range: a result the laboratory never gave.
    Now: a narrative row (the label), no observation, no unit shown as a value, and a warning."""
    root, out = convert(conformant, kappa(obx={"777-3": "||G/L|150-400||||F|||20250402073000+0200"}))
    codes = [o.find("h:code", NS).get("code") for o in root.iterfind(".//h:observation", NS)]
    assert "777-3" not in codes and "6690-2" in codes
    assert not [v for v in root.iterfind(".//h:observation/h:value", NS) if (v.text or "").strip() == "G/L"]
    assert "Plaquettes" in narrative(root)
    assert "result '777-3' has no value: written in the narrative only" in out.warnings


def test_a_comment_on_a_request_stays_with_its_battery(conformant):
    """An NTE after an OBR (HPRIM: a C after an OBR) is about that request: under its battery, in the narrative, the
    PDF copy and as a comment entry of its organizer. Before: in the document's "Commentaire" section at the end,
    saying nothing of which analyses it was about. NTE-3 repeats are its lines (they went out joined by `~`)."""
    data = _with(kappa(), b"OBX|1|NM|6690-2", "NTE|1|L|NFS contrôlée sur lame~Pas d'agrégat plaquettaire")
    root, _ = convert(conformant, data)
    assert root.find(".//h:section[h:title='Commentaire']", NS) is None
    [organizer] = [o for o in root.iterfind(".//h:organizer[@classCode='BATTERY']", NS)
                   if o.find("h:code", NS).get("code") == "58410-2"]
    ref = organizer.find("h:component/h:act/h:text/h:reference", NS).get("value")[1:]
    [note] = root.xpath(f"//h:content[@ID='{ref}']", namespaces=NS)
    assert [note.text] + [br.tail for br in note.iterfind("h:br", NS)] == [
        "NFS contrôlée sur lame", "Pas d'agrégat plaquettaire"]
    rows = [etree.tostring(tr, method="text", encoding="unicode") for tr in root.iterfind(".//h:tbody/h:tr", NS)]
    assert rows.index("NFS") + 1 == rows.index("NFS contrôlée sur lamePas d'agrégat plaquettaire")
    assert "NFS contr\\364l\\351e sur lame) Tj" in pdf_copy(root)
    hprim = corpus("hs_alpha_hemato.hpr").replace(b"\r\nOBX|1|NM|CRP", b"\r\nC|1|L|Dosage sur tube sec.\r\nOBX|1|NM|CRP")
    [report] = parse_hprim_sante(hprim.replace(b"L|1||1|13", b"L|1||1|14"))
    assert (report.batteries[1].comments, report.comments) == (("Dosage sur tube sec.",), ())


def test_an_hl7_reference_pointer_is_not_sent_as_a_result_value(conformant):
    """OBX-2 RP (reference pointer: where the lab keeps an image or a document) went out as a text result holding
    the address with its component separators (`https://...^PACS^IMAGE^JPEG`); as HPRIM FIC: no observation, the
    address nowhere, a warning."""
    data = _with(kappa(), b"OBR|2|", "OBX|3|RP|11529-5^Image^LN||https://pacs.example/k/123^PACS^IMAGE^JPEG||||||F")
    root, out = convert(conformant, data)
    assert b"pacs.example" not in etree.tostring(root) and "pacs.example" not in pdf_copy(root)
    assert "fichier du laboratoire, non transmis" in narrative(root)
    assert ("result '11529-5' is a file reference (OBX type RP): the file is not part of the report; not sent as a "
            "result value") in out.warnings


def test_numeric_results_with_a_comparator_or_a_span_are_intervals(conformant):
    """HL7 SN `<^0.5`, `>=^60`, `^10^-^20` (and NM `<3,0` as HPRIM writes it) went out as text (`<0.5 mmol/L`):
    now an IVL_PQ in the UCUM unit, the bound open for a strict comparator, as XD-LAB types such results (the
    narrative keeps the lab's writing); SN `=^5` is the number 5 (it went out as the text `=5`)."""
    rows = {"2823-3": "|<^0.5|mmol/L|3.5-5.0|L|||F", "2345-7": "|^0,80^-^1,20|g/L|0,70-1,10|N|||F",
            "6690-2": "|>=^60|G/L|4.0-10.0|H|||F", "777-3": "|=^245|G/L|150-400|N|||F"}
    data = kappa(obx=rows)
    for code in rows:
        data = data.replace(f"|ST|{code}^".encode(), f"|SN|{code}^".encode())
    root, _ = convert(conformant, data)
    values = {o.find("h:code", NS).get("code"): o.find("h:value", NS) for o in root.iterfind(".//h:observation", NS)}

    def bounds(v):
        return [(etree.QName(b).localname, b.get("value"), b.get("unit"), b.get("inclusive")) for b in v]
    xsi = "{http://www.w3.org/2001/XMLSchema-instance}type"
    assert values["2823-3"].get(xsi) == "IVL_PQ" and bounds(values["2823-3"]) == [("high", "0.5", "mmol/L", "false")]
    assert bounds(values["6690-2"]) == [("low", "60", "10*9/L", None)]
    assert bounds(values["2345-7"]) == [("low", "0.80", "g/L", None), ("high", "1.20", "g/L", None)]
    assert (values["777-3"].get(xsi), values["777-3"].get("value")) == ("PQ", "245")
    assert "<0.5" in narrative(root) and ">=60" in narrative(root)
    [hprim] = [o for o in convert(conformant, corpus("hs_alpha_hemato.hpr"), "hprim_to_cda_xdm")[0].iterfind(
        ".//h:observation", NS) if o.find("h:code", NS).get("code") == "1988-5"]                  # CRP <3,0 mg/l
    assert bounds(hprim.find("h:value", NS)) == [("high", "3.0", "mg/L", "false")]


def test_a_reference_range_repeating_the_unit_is_still_an_interval(conformant):
    """OBX-7 `150 - 400 G/L`, `< 5 mg/l` (the unit written again after the bounds, as many SIL print it) went out as
    text only, the GP's software then has no range to check the value against; now an IVL_PQ as for `150 - 400`,
    the text kept as the lab wrote it in the narrative."""
    data = kappa(obx={"777-3": "|98|G/L|150 - 400 G/L|L|||F|||20250402073000+0200",
                      "2823-3": "|4.1|mmol/l|3,5 - 5,0 mmol/l|N|||F|||20250402073000+0200"})
    root, _ = convert(conformant, data)
    ranges = {o.find("h:code", NS).get("code"): o.find("h:referenceRange/h:observationRange/h:value", NS)
              for o in root.iterfind(".//h:observation", NS) if o.find("h:referenceRange", NS) is not None}
    assert [(b.get("value"), b.get("unit")) for b in ranges["777-3"]] == [("150", "10*9/L"), ("400", "10*9/L")]
    assert [(b.get("value"), b.get("unit")) for b in ranges["2823-3"]] == [("3.5", "mmol/L"), ("5.0", "mmol/L")]
    assert "150 - 400 G/L" in narrative(root)
    [report] = parse_hprim_sante(corpus("hs_alpha_hemato.hpr").replace(b"|150 - 400|", b"|150 - 400 G/l|"))
    assert [(r.range_low, r.range_high) for r in report.results if r.local_code == "PLQ"] == [("150", "400")]


def test_a_date_as_result_is_a_date(conformant):
    """OBX-2 DT / TS (date of the last period, of onset, of the injection) went out as the text `20250310`, which
    reads as a number: now a TS value (with its zone when it has a time), `10/03/2025` in the narrative and the PDF
    copy; a value that is no date stays the lab's text."""
    data = _with(kappa(), b"OBR|2|", "OBX|3|DT|8665-2^Date des dernières règles^LN||20250310||||||F",
                 "OBX|4|TS|11778-8^Date d'accouchement prévue^LN||202512150930||||||F",
                 "OBX|5|DT|21112-8^Date de naissance de l'enfant^LN||inconnue||||||F")
    root, _ = convert(conformant, data)
    values = {o.find("h:code", NS).get("code"): o.find("h:value", NS) for o in root.iterfind(".//h:observation", NS)}
    xsi = "{http://www.w3.org/2001/XMLSchema-instance}type"
    assert (values["8665-2"].get(xsi), values["8665-2"].get("value")) == ("TS", "20250310")
    assert values["11778-8"].get("value") == "20251215093000+0100"
    assert (values["21112-8"].get(xsi), values["21112-8"].text) == ("ST", "inconnue")
    assert "10/03/2025" in narrative(root) and "15/12/2025 09:30" in narrative(root)
    assert "(10/03/2025) Tj" in pdf_copy(root)


def test_a_coded_result_given_by_its_alternate_or_original_text_is_not_empty(conformant):
    """CE / CWE `POS^Positif^L` is `Positif`; one whose text is only in the alternate (`^^^NEG^Négatif^L`) or in the
    original text (CWE-9) went out empty (and is now no observation at all, having no value): it is that text."""
    data = _with(kappa(), b"OBR|2|", "OBX|3|CWE|5195-3^VIH 1+2^LN||^^^NEG^Négatif^L||||||F",
                 "OBX|4|CWE|5196-1^Antigène HBs^LN||NEG^^L^^^^^^Non détecté (seuil 0,05 UI/mL)||||||F",
                 "OBX|5|CE|16935-9^Anticorps anti-HBs^LN||POS^Positif^L||||||F")
    root, _ = convert(conformant, data)
    values = {o.find("h:code", NS).get("code"): o.find("h:value", NS).text for o in root.iterfind(".//h:observation", NS)}
    assert (values["5195-3"], values["5196-1"], values["16935-9"]) == (
        "Négatif", "Non détecté (seuil 0,05 UI/mL)", "Positif")
    [report] = parse_hprim_sante(corpus("hs_alpha_hemato.hpr").replace(
        b"OBX|1|NM|CRP~Prot\xe9ine C r\xe9active~L~1988-5~CRP [Masse/Volume] S\xe9rum/Plasma~LN||<3,0",
        b"OBX|1|CE|CRP~Prot\xe9ine C r\xe9active~L~1988-5~CRP [Masse/Volume] S\xe9rum/Plasma~LN||~~~NEG~N\xe9gatif~L"))
    assert [r.value for r in report.results if r.local_code == "CRP"] == ["Négatif"]


def test_lab3_results_with_the_labs_pdf_in_an_obx_ed_are_a_cr_bio_with_that_copy(conformant):
    """French LIS often add the PDF of the report to their LAB-3 ORU (an OBR "CR PDF" with one OBX ED). Before: the
    message was taken for a PDF letter (detection), and the LAB-3 chain refused it ("no structured HL7 v2 ORU^R01")
    or, read as LAB-3, refused the ED OBX: the lab's results never reached the GP as a CR-BIO. Now: the structured
    results, with that PDF as the FR-Document-PDF-copie (and attached to the mail); a PDF cut in transit is refused."""
    import base64

    import pytest
    from tx_support import NOW, make_pdf, mail

    from hub.errors import ParseError
    from hub.transform.parse.detect import content_info

    pdf = make_pdf(3000)
    ed = (f"OBR|3|CMD-K1|LAB-K1|11502-2^CR d'examens biologiques^LN|||20250402073000+0200|||||||||||||||"
          f"20250402101000+0200|||F\rOBX|1|ED|11502-2^CR d'examens biologiques^LN||^application^pdf^Base64^"
          f"{base64.b64encode(pdf).decode()}||||||F")
    data = kappa().rstrip(b"\r") + b"\r" + ed.encode() + b"\r"
    info = content_info(mail((data, "application/hl7-v2", "k.hl7")))
    assert (info.kind, info.doc_code, info.flavour) == ("hl7_oru", "11502-2", "lab3")
    root, out = convert(conformant, data)
    assert base64.b64decode(root.find(".//h:observationMedia/h:value", NS).text) == pdf
    assert "report_to_pdf" not in [s.name for s in out.steps]
    assert len(root.xpath("//h:entry//h:observation[h:templateId/@root='1.3.6.1.4.1.19376.1.3.1.6']",
                          namespaces=NS)) == 4                                       # the 4 results, not the PDF
    assert b"compte-rendu.pdf" in out.message
    cut = kappa().rstrip(b"\r") + b"\r" + ed.replace(base64.b64encode(pdf).decode(),
                                                     base64.b64encode(pdf[:2000]).decode()).encode() + b"\r"
    with pytest.raises(ParseError) as err:
        conformant.apply("hl7_oru_to_cda_xdm", mail((cut, "application/hl7-v2", "k.hl7")), {"now": NOW},
                         account="labo-alpha")
    assert err.value.where == "OBX-5 (the PDF)"


def test_a_word_as_a_numeric_result_is_not_given_the_unit(conformant):
    """OBX-2 NM holding a word (`non rendu`, `traces`), as SIL write a result they could not measure: it went out
    as the text `non rendu mmol/L`, as if it were a quantity; a quantity the unit table does not know keeps its unit
    (`180 UA/ml`)."""
    data = kappa(obx={"2823-3": "|non rendu|mmol/L|3.5-5.0||||F|||20250402073000+0200",
                      "2345-7": "|180|UA/ml|<200|N|||F|||20250402073000+0200"}).replace(b"|ST|2823-3^", b"|NM|2823-3^")
    root, _ = convert(conformant, data)
    values = {o.find("h:code", NS).get("code"): o.find("h:value", NS).text for o in root.iterfind(".//h:observation", NS)}
    assert (values["2823-3"], values["2345-7"]) == ("non rendu", "180 UA/ml")
    assert "(non rendu) Tj" in pdf_copy(root) and "(180 UA/ml) Tj" in pdf_copy(root)


def test_the_labs_pdf_split_over_two_obx_is_its_copy_whole(conformant):
    """The lab's PDF of a LAB-3 ORU split over consecutive OBX ED with the same OBX-3 and OBX-4 is one copy (before:
    "ORU^R01 with 2 PDF copies"), and the parts are no results."""
    import base64

    from tx_support import make_pdf

    pdf = make_pdf(3000)
    b64 = base64.b64encode(pdf).decode()
    half = len(b64) // 2
    ed = (f"OBR|3|CMD-K1|LAB-K1|11502-2^CR d'examens biologiques^LN|||20250402073000+0200|||||||||||||||"
          f"20250402101000+0200|||F\r"
          f"OBX|1|ED|11502-2^CR d'examens biologiques^LN|1|^application^pdf^Base64^{b64[:half]}||||||F\r"
          f"OBX|2|ED|11502-2^CR d'examens biologiques^LN|1|^application^pdf^Base64^{b64[half:]}||||||F")
    root, out = convert(conformant, kappa().rstrip(b"\r") + b"\r" + ed.encode() + b"\r")
    assert base64.b64decode(root.find(".//h:observationMedia/h:value", NS).text) == pdf
    assert len(root.xpath("//h:entry//h:observation[h:templateId/@root='1.3.6.1.4.1.19376.1.3.1.6']",
                          namespaces=NS)) == 4
