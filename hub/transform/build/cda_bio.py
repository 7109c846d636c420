"""CDA R2 CR-BIO level 3 (code 11502-2, XD-LAB + CI-SIS CR-BIO templates) from a `LabReport` (FORMATS.md §4.3).

Header after /work/shared/samples/cda/BIO-CR-BIO_2024.01_TSH_1.xml: author/legal authenticator = validating
biologist (8+RPPS) and laboratory (1+FINESS), prescriber participant REF, order id, serviceEvent with
`lab:statusCode`, encounter with responsible party. Body: one chapter section, one sub-chapter with a narrative table
and one DRIV entry whose observations carry LOINC (or the local code system), UCUM PQ values, interpretationCode and
IVL_PQ reference ranges; plus the FR-Document-PDF-copie section when a PDF rendering is given. Inputs are trusted
model objects; the hub OID and time zone are arguments. Validation: `hub.transform.build.cda.finish`.
"""

from __future__ import annotations

import base64
from datetime import tzinfo

from hub.transform.build.cda import DOC_LABELS, T_CISIS, T_CRBIO, T_HL7FR, T_XDLAB, Header, encounter_xml, header_xml, org
from hub.transform.build.cda import person_id, ts_el, x
from hub.transform.terminology.dates import decimal, is_decimal
from hub.transform.model import LOINC, LabReport, Party, Result

TITLE = "Compte rendu d'examens biologiques"
CHAPTERS = {"18719-5": "Biochimie", "18723-7": "Hématologie", "18727-8": "Sérologie", "18725-2": "Microbiologie",
            "18729-4": "Examens urinaires", "18717-9": "Banque du sang", "26436-6": "Examens de laboratoire"}
INTERPRETATION = {"N": "Normal", "L": "Bas", "H": "Haut", "LL": "Critique bas", "HH": "Critique haut",
                  "A": "Anormal", "AA": "Critique anormal", "<": "Inférieur au seuil", ">": "Supérieur au seuil"}
_STATUS = {"F": "completed", "C": "completed", "P": "active", "I": "active", "R": "active", "X": "aborted",
           "D": "aborted"}


def _code(res: Result, ref: str, local_system: str) -> str:
    original = f'<originalText><reference value="#{ref}"/></originalText>'
    if res.loinc:
        return (f'<code code="{x(res.loinc)}" codeSystem="{LOINC}" codeSystemName="LOINC" '
                f'displayName="{x(res.loinc_label or res.label)}">{original}</code>')
    return (f'<code code="{x(res.local_code)}" codeSystem="{x(local_system)}" codeSystemName="local" '
            f'displayName="{x(res.label)}">{original}</code>')


def _value(res: Result) -> tuple[str, str]:
    """(value element, unit used for the range) - PQ when numeric with a UCUM unit (or none), else ST."""
    if res.value_type in ("NM", "SN") and is_decimal(res.value) and (res.ucum or not res.unit):
        unit = res.ucum or "1"
        return f'<value xsi:type="PQ" value="{x(decimal(res.value))}" unit="{x(unit)}"/>', unit
    text = f"{res.value} {res.unit}".strip()
    return f'<value xsi:type="ST">{x(text)}</value>', ""


def _range(res: Result, unit: str) -> str:
    if unit and (res.range_low or res.range_high):
        bounds = "".join(f'<{tag} value="{x(v)}" unit="{x(unit)}"/>' for tag, v in
                         (("low", res.range_low), ("high", res.range_high)) if v)
        body = f'<value xsi:type="IVL_PQ">{bounds}</value>'
    elif res.range_text or res.range_low or res.range_high:
        body = f"<text>{x(res.range_text or f'{res.range_low} - {res.range_high}')}</text>"
    else:
        return ""
    return ('<referenceRange typeCode="REFV"><observationRange classCode="OBS" moodCode="EVN.CRT">' + body
            + '<interpretationCode code="N" codeSystem="2.16.840.1.113883.5.83"/></observationRange></referenceRange>')


def _observation(res: Result, n: int, when: str, local_system: str, tz: tzinfo) -> str:
    value, unit = _value(res)
    flag = res.flag.upper()
    interp = (f'<interpretationCode code="{x(flag)}" displayName="{INTERPRETATION[flag]}" '
              f'codeSystem="2.16.840.1.113883.5.83"/>' if flag in INTERPRETATION else "")
    notes = "".join(
        '<entryRelationship typeCode="COMP"><act classCode="ACT" moodCode="EVN">'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.2"/>'
        '<code code="48767-8" displayName="Commentaire" codeSystem="2.16.840.1.113883.6.1"/>'
        f'<text>{x(note)}</text><statusCode code="completed"/></act></entryRelationship>' for note in res.comments)
    return ('<entryRelationship typeCode="COMP"><observation classCode="OBS" moodCode="EVN">'
            '<templateId root="1.3.6.1.4.1.19376.1.3.1.6"/><templateId root="1.2.250.1.213.1.1.3.80"/>'
            + _code(res, f"res-{n}", local_system)
            + f'<statusCode code="{_STATUS.get(res.status.upper(), "completed")}"/>'
            + ts_el("effectiveTime", res.observed_at or when, tz) + value + interp + notes + _range(res, unit)
            + "</observation></entryRelationship>")


def _narrative(report: LabReport) -> str:
    rows = []
    for n, res in enumerate(report.results, 1):
        rng = res.range_text or (f"{res.range_low} - {res.range_high}" if res.range_low or res.range_high else "")
        note = "".join(f"<br/>{x(c)}" for c in res.comments)
        rows.append(f'<tr><td><content ID="res-{n}">{x(res.label or res.local_code)}</content>{note}</td>'
                    f"<td>{x(res.value)}</td><td>{x(res.unit)}</td><td>{x(rng)}</td><td>{x(res.flag)}</td></tr>")
    comments = "".join(f"<paragraph>{x(c)}</paragraph>" for c in report.comments)
    return ("<text><table><thead><tr><th>Examen</th><th>Résultat</th><th>Unité</th><th>Valeurs de référence</th>"
            "<th>Interprétation</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>" + comments + "</text>")


def _pdf_section(pdf: bytes, root: str, ext: str) -> str:
    return (
        '<component><section><templateId root="1.2.250.1.213.1.1.2.243"/>'
        f'<id root="{x(root)}.5" extension="{x(ext)}"/>'
        '<code code="55108-5" displayName="Copie du document" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/><title>Copie du document</title><text><table><tbody><tr><td>'
        '<renderMultiMedia referencedObject="doc-1"/></td></tr></tbody></table></text>'
        '<entry><organizer classCode="CLUSTER" moodCode="EVN"><templateId root="1.2.250.1.213.1.1.3.18"/>'
        f'<id root="{x(root)}.6" extension="{x(ext)}"/>'
        '<code code="55107-7" displayName="Document attaché" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/><statusCode code="completed"/>'
        '<component><observation classCode="OBS" moodCode="EVN">'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.13"/><templateId root="1.2.250.1.213.1.1.3.48"/>'
        '<templateId root="1.2.250.1.213.1.1.3.48.18"/>'
        f'<id root="{x(root)}.7" extension="{x(ext)}"/>'
        '<code code="69764-9" displayName="Type de document" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/><statusCode code="completed"/><effectiveTime nullFlavor="NA"/>'
        '<value xsi:type="CD" code="55108-5" displayName="Copie du document" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/></observation></component>'
        '<component><observationMedia classCode="OBS" moodCode="EVN" ID="doc-1">'
        '<value mediaType="application/pdf" representation="B64">' + base64.b64encode(pdf).decode("ascii")
        + "</value></observationMedia></component></organizer></entry></section></component>")


def _requester(p: Party, tz: tzinfo, when: str) -> str:
    if not (p.rpps or p.family or p.local_code):
        return ""
    name = "".join(([f"<given>{x(p.given)}</given>"] if p.given else [])
                   + [f"<family>{x(p.family or p.local_code)}</family>"])
    time = f'<time xsi:type="IVL_TS">{ts_el("high", when, tz)}</time>' if when else ""
    return ('<participant typeCode="REF"><templateId root="1.3.6.1.4.1.19376.1.3.3.1.6"/>' + time
            + '<associatedEntity classCode="PROV">' + person_id(p)
            + f"<associatedPerson><name>{name}</name></associatedPerson></associatedEntity></participant>")


def build_cr_bio_n3(report: LabReport, *, doc_id_root: str, doc_id_ext: str, local_id_root: str,
                    local_code_system: str, tz: tzinfo, effective_time: str, pdf: bytes | None = None,
                    chapter: str = "18719-5", facility_code: str = "SA25",
                    practice_setting: str = "AMBULATOIRE") -> str:
    author = report.sender
    h = Header(doc_id_root, doc_id_ext, "11502-2", DOC_LABELS["11502-2"], TITLE, effective_time,
               ((T_HL7FR, ""), (T_CISIS, ""), (T_XDLAB, ""), (T_CRBIO, "")), "N", local_id_root)
    chapter_label = CHAPTERS.get(chapter, "Biologie")
    chapter_code = (f'<code code="{x(chapter)}" displayName="{x(chapter_label)}" codeSystem="{LOINC}" '
                    'codeSystemName="LOINC"/>')
    start = report.received_at or report.collected_at or effective_time
    setting = f'<standardIndustryClassCode code="{x(practice_setting)}" codeSystem="1.2.250.1.213.1.1.4.9"/>'
    person = (f"<assignedPerson><name>{'<given>' + x(author.given) + '</given>' if author.given else ''}"
              f"<family>{x(author.family or author.org_name or 'UNK')}</family></name></assignedPerson>")
    service = (
        "<documentationOf><serviceEvent>" + chapter_code + '<lab:statusCode code="completed"/><effectiveTime>'
        + ts_el("low", start, tz) + ts_el("high", report.report_date or effective_time, tz) + "</effectiveTime>"
        + '<performer typeCode="PRF"><templateId root="1.3.6.1.4.1.19376.1.3.3.1.7"/><assignedEntity>'
        + person_id(author) + person + org(author, extra=setting)
        + "</assignedEntity></performer></serviceEvent></documentationOf>")
    order = (f'<inFulfillmentOf><order><id root="{x(local_id_root)}.9" extension="{x(report.order_id)}"/>'
             "</order></inFulfillmentOf>" if report.order_id else "")
    responsible = ("<responsibleParty><assignedEntity>" + person_id(author)
                   + '<code code="G15_10/SM03" displayName="Médecin - Biologie médicale (SM)" '
                   'codeSystem="1.2.250.1.213.1.1.4.5"/>' + person + org(author)
                   + "</assignedEntity></responsibleParty>")
    when = report.collected_at or report.report_date or effective_time
    observations = "".join(_observation(r, n, when, local_code_system, tz) for n, r in enumerate(report.results, 1))
    section_ids = ('<templateId root="1.3.6.1.4.1.19376.1.3.3.2.2"/><templateId root="1.2.250.1.213.1.1.2.71"/>'
                   + chapter_code)
    body = (
        "<component><structuredBody><component><section>"
        '<templateId root="1.3.6.1.4.1.19376.1.3.3.2.1"/><templateId root="1.2.250.1.213.1.1.2.70"/>'
        + chapter_code + f"<title>{x(chapter_label.upper())}</title>"
        + "<component><section>" + section_ids + _narrative(report)
        + '<entry typeCode="DRIV"><templateId root="1.3.6.1.4.1.19376.1.3.1"/>'
        '<templateId root="1.2.250.1.213.1.1.3.21"/><act classCode="ACT" moodCode="EVN">' + chapter_code
        + '<statusCode code="completed"/>' + observations + "</act></entry></section></component>"
        + "</section></component>" + (_pdf_section(pdf, doc_id_root, doc_id_ext) if pdf else "")
        + "</structuredBody></component>")
    return (header_xml(h, report.patient, author, tz, specialty="G15_10/SM03", practice_setting=practice_setting)
            + _requester(report.requester, tz, report.collected_at) + order + service
            + encounter_xml(report.collected_at or start, facility_code, tz, responsible) + body
            + "</ClinicalDocument>")
