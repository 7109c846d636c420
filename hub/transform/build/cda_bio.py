"""CDA R2 CR-BIO level 3 (code 11502-2, XD-LAB + CI-SIS CR-BIO 2024.01 templates) from a `LabReport`
(FORMATS.md §4.3), built to pass the ANS CR-BIO 2024.01 schematron and the CI-SIS profiles with no failed assertion.

Header after ../shared/samples/cda/BIO-CR-BIO_2024.01_TSH_1.xml: author / legal authenticator = validating biologist
(8+RPPS, structured name) and laboratory (1+FINESS, address, telecom), author time = the report's own time (not the
conversion's), prescriber participant REF (when it has an id), order id, serviceEvent (chapter code, lab:statusCode,
received -> released times) whose performer (FR-Laboratoire-executant) carries the validation time, encounter with
the responsible biologist. Body: one chapter section with a sub-chapter: narrative table (every result with value,
unit, second value, range, flag, comments) and one DRIV entry: each requested battery (OBR-4, LOINC when given) is an
organizer BATTERY, each result an observation with LOINC (or the laboratory's code system), UCUM PQ value (its second
unit as PQ translation) or text when the unit is not UCUM, interpretationCode, IVL_PQ reference range (open bounds
kept open), analysis time (OBX-19) on a FR-Laboratoire-executant performer, and comment entries (IHE + CCD + CI-SIS
template ids) pointing at the narrative. Statuses follow the input (XD-LAB): a preliminary result is `completed`
(CR-BIO allows no other status with a value) inside an `active` battery, a cancelled one `aborted`; a result to
come, withdrawn or a file reference is no observation, only a narrative row saying so; the act and the serviceEvent
`lab:statusCode` are `active` for a partial report (`LabReport.partial`). Report-level comments go to a
FR-Commentaire-non-code section. Then the FR-Document-PDF-copie section with the laboratory's PDF, or the hub's
rendering (`build.pdf_report`).
Inputs are trusted model objects; the hub OID, time zone and value sets are arguments. Validation:
`hub.transform.build.cda.finish` (XSD) and `hub.transform.validate.schematron` (ANS rules).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import tzinfo

from hub.transform.build.cda import (DOC_LABELS, T_CISIS, T_CRBIO, T_HL7FR, T_XDLAB, Header, addr_xml, coded,
                                     encounter_xml, entity, header_xml, name_xml, person_id, telecom_xml, ts_el, x)
from hub.transform.model import (CANCELLED, FINAL, LOINC, NOT_ASKED, PENDING, PRELIMINARY, REQUEST_PARTIAL, WITHDRAWN,
                                 Battery, LabReport, Party, Result)
from hub.transform.terminology.dates import decimal, is_decimal, parse_range
from hub.transform.terminology.units import UCUM_SYSTEM
from hub.transform.terminology.valuesets import PRACTICE_SETTING, ValueSets

TITLE = "Compte rendu d'examens biologiques"
CHAPTERS = {"18719-5": "Biochimie", "18723-7": "Hématologie", "18727-8": "Sérologie", "18725-2": "Microbiologie",
            "18729-4": "Examens urinaires", "18717-9": "Banque du sang", "26436-6": "Examens de laboratoire",
            "18718-7": "Protéines, marqueurs tumoraux, vitamines", "18720-3": "Coagulation",
            "18767-4": "Gaz du sang", "18716-1": "Allergologie", "18728-6": "Toxicologie",
            "18721-1": "Suivi thérapeutique", "26435-8": "Pathologie moléculaire", "26437-4": "Tests de provocation",
            "26438-2": "Cytologie", "18722-9": "Fertilité", "18724-5": "HLA", "18726-0": "Radiobiologie"}
INTERPRETATION = {"N": "Normal", "L": "Bas", "H": "Haut", "LL": "Critique bas", "HH": "Critique haut",
                  "A": "Anormal", "AA": "Critique anormal", "<": "Inférieur au seuil", ">": "Supérieur au seuil",
                  # the rest of JDV_HL7_ObservationInterpretation_CISIS (antibiograms, serologies, trends...)
                  "S": "Sensible", "R": "Résistant", "I": "Intermédiaire", "SDD": "Sensible à forte dose",
                  "NS": "Non sensible", "SYN-R": "Synergie - résistant", "SYN-S": "Synergie - sensible",
                  "POS": "Positif", "NEG": "Négatif", "DET": "Détecté", "ND": "Non détecté", "RR": "Réactif",
                  "WR": "Faiblement réactif", "NR": "Non réactif", "IND": "Indéterminé", "E": "Équivoque",
                  "B": "Amélioration", "W": "Dégradation", "U": "Augmentation significative",
                  "D": "Diminution significative", "HU": "Significativement haut", "LU": "Significativement bas",
                  "HX": "Hors seuil supérieur", "LX": "Hors seuil inférieur", "EX": "Hors seuils",
                  "CAR": "Porteur d'une forme altérée d'un gène", "EXP": "Attendu", "UNE": "Inattendu",
                  "IE": "Preuves insuffisantes", "NCL": "Pas de standard défini"}
BIOLOGY = "G15_10/SM03"
_LAB_EXEC = "1.3.6.1.4.1.19376.1.3.3.1.7"
_COMMENT_IDS = ('<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.2"/><templateId root="2.16.840.1.113883.10.20.1.40"/>'
                '<templateId root="1.2.250.1.213.1.1.3.32"/>')


def _code(res: Result, ref: str, local_system: str) -> str:
    original = f'<originalText><reference value="#{ref}"/></originalText>'
    local = (f'<translation code="{x(res.local_code)}" codeSystem="{x(local_system)}" '
             f'displayName="{x(res.label or res.local_code)}"/>') if res.local_code else ""
    if res.loinc:
        return (f'<code code="{x(res.loinc)}" codeSystem="{LOINC}" codeSystemName="LOINC" '
                f'displayName="{x(res.loinc_label or res.label)}">{original}{local}</code>')
    # no LOINC: the laboratory's code as a translation of an "other" code (the form CR-BIO asks inside batteries)
    return f'<code nullFlavor="OTH">{original}{local}</code>'


def _pq(res: Result) -> bool:
    return res.value_type in ("NM", "SN") and is_decimal(res.value) and bool(res.ucum or not res.unit)


def _interval(res: Result, unit: str) -> str:
    """A numeric result written with a comparator or as a span (`<0.5`, `>= 60`, SN `^10^-^20`): an IVL_PQ (XD-LAB's
    type for such results) whose bound is open when the comparator is strict; '' when the value is no such shape."""
    low, high, low_open, high_open = parse_range(res.value)
    if not (low or high):
        return ""
    bounds = "".join(f'<{tag} value="{x(v)}" unit="{x(unit)}"' + (' inclusive="false"' if open_ else "") + "/>"
                     for tag, v, open_ in (("low", low, low_open), ("high", high, high_open)) if v)
    return f'<value xsi:type="IVL_PQ">{bounds}</value>'


def _value(res: Result) -> tuple[str, str]:
    """(value element, unit used for the range) - PQ when numeric with a UCUM unit (or none), IVL_PQ when it is a bound
    or a span (`<0.5`, `>=60`, `10-20`), else ST with the unit as the laboratory wrote it. The HPRIM Net second value
    goes as a PQ translation when its unit is UCUM."""
    if _pq(res):
        unit = res.ucum or "1"
        second = (f'<translation value="{x(decimal(res.value2))}" code="{x(res.ucum2)}" '
                  f'codeSystem="{UCUM_SYSTEM}" codeSystemName="UCUM"/>'
                  if res.value2 and res.ucum2 and is_decimal(res.value2) else "")
        return (f'<value xsi:type="PQ" value="{x(decimal(res.value))}" unit="{x(unit)}">{second}</value>'
                if second else f'<value xsi:type="PQ" value="{x(decimal(res.value))}" unit="{x(unit)}"/>'), unit
    if res.value_type in ("NM", "SN") and (res.ucum or not res.unit):
        unit = res.ucum or "1"
        interval = _interval(res, unit)
        if interval:
            return interval, unit
    return f'<value xsi:type="ST">{x(with_unit(res.value, res.unit))}</value>', ""


def with_unit(value: str, unit: str) -> str:
    """A text result with its unit when it is a quantity (`180 UA/ml`, `<0,5 UA/ml`); a word (`non rendu`,
    `traces`, `Positif`) without it: `non rendu mmol/L` is no result."""
    return f"{value} {unit}".strip() if any(c.isdigit() for c in value) else value


def _range(res: Result, unit: str) -> str:
    if unit and (res.range_low or res.range_high):
        bounds = ""
        for tag, v, open_ in (("low", res.range_low, res.range_low_open), ("high", res.range_high,
                                                                            res.range_high_open)):
            if v:
                bounds += f'<{tag} value="{x(v)}" unit="{x(unit)}"' + (' inclusive="false"' if open_ else "") + "/>"
        body = f'<value xsi:type="IVL_PQ">{bounds}</value>'
    elif res.range_display:
        body = f"<text>{x(res.range_display)}</text>"
    else:
        return ""
    return ('<referenceRange typeCode="REFV"><observationRange classCode="OBS" moodCode="EVN.CRT">' + body
            + '<interpretationCode code="N" displayName="Normal" codeSystem="2.16.840.1.113883.5.83"/>'
            "</observationRange></referenceRange>")


def _comment(ref: str) -> str:
    return ('<entryRelationship typeCode="COMP"><act classCode="ACT" moodCode="EVN">' + _COMMENT_IDS
            + '<code code="48767-8" displayName="Commentaire" codeSystem="2.16.840.1.113883.6.1" '
            f'codeSystemName="LOINC"/><text><reference value="#{ref}"/></text><statusCode code="completed"/>'
            "</act></entryRelationship>")


def _lab_performer(lab: Party, when: str, tz: tzinfo, vs: ValueSets, setting: str) -> str:
    """FR-Laboratoire-executant: the laboratory that performed the analysis, with the analysis time."""
    time = f"<time>{ts_el('high', when, tz)}</time>" if when else '<time nullFlavor="UNK"/>'
    return (f'<performer typeCode="PRF"><templateId root="{_LAB_EXEC}"/>' + time + "<assignedEntity>"
            + entity(lab, vs, specialty=BIOLOGY, org_extra=setting) + "</assignedEntity></performer>")


def _interpretations(res: Result) -> str:
    """One interpretationCode per flag of the ANS value set (OBX-8 repeats: `H~A` is high and abnormal; XD-LAB and
    CR-BIO allow several); the other flags go in the narrative only (with a warning from the chain)."""
    return "".join(f'<interpretationCode code="{x(f)}" displayName="{INTERPRETATION[f]}" '
                   'codeSystem="2.16.840.1.113883.5.83"/>'
                   for f in dict.fromkeys(f.upper() for f in res.flags) if f in INTERPRETATION)


def in_entries(res: Result) -> bool:
    """A result written as a structured observation: it has a value (final or preliminary: CR-BIO allows only
    `completed` or `aborted` on an observation, so a preliminary result is `completed` inside an `active` battery),
    or it was cancelled (`aborted`: the result will never come). A result to come, one deleted or posted in error,
    one not asked, a file reference (HPRIM FIC, HL7 RP) and a line without any value (a title such as `Formule
    leucocytaire`) are no observation: the narrative says what they are."""
    if res.file_reference:
        return False
    return res.state == CANCELLED or (res.state in (FINAL, PRELIMINARY) and bool(res.value.strip()))


def is_date_value(res: Result) -> bool:
    """A date as the result (HL7 OBX-2 DT / TS / DTM, checked by the parser)."""
    return res.value_type in ("DT", "TS", "DTM") and res.value[:8].isdigit()


def date_display(value: str) -> str:
    """`20250310[0930]` -> `10/03/2025[ 09:30]`: a date as a French reader reads it (shorter values as they are)."""
    if len(value) < 8:
        return value
    out = f"{value[6:8]}/{value[4:6]}/{value[:4]}"
    return out + (f" {value[8:10]}:{value[10:12]}" if len(value) >= 12 and value[8:12].isdigit() else "")


def _observation(res: Result, n: int, when: str, local_system: str, tz: tzinfo, lab: Party, vs: ValueSets,
                 setting: str) -> str:
    who = lab if res.observer is None else replace(lab, rpps=res.observer.rpps, family=res.observer.family,
                                                   given=res.observer.given)
    performer = _lab_performer(who, res.analysed_at, tz, vs, setting) if res.analysed_at else ""
    notes = "".join(_comment(f"res-{n}-c{k}") for k in range(1, len(res.comments) + 1))
    if res.state == CANCELLED:          # no value, no interpretation, no range: the result will never come
        status, value, interp, rng = "aborted", "", "", ""
    elif is_date_value(res):            # TS, its zone added as for every CDA time
        status, value, interp, rng = "completed", ts_el("value", res.value, tz, ' xsi:type="TS"'), "", ""
    else:
        value, unit = _value(res)
        status, interp, rng = "completed", _interpretations(res), _range(res, unit)
    return ('<entryRelationship typeCode="COMP"><observation classCode="OBS" moodCode="EVN">'
            '<templateId root="1.3.6.1.4.1.19376.1.3.1.6"/><templateId root="1.2.250.1.213.1.1.3.80"/>'
            + _code(res, f"res-{n}", local_system) + f'<statusCode code="{status}"/>'
            + ts_el("effectiveTime", res.observed_at or when, tz) + value + interp + performer + notes
            + rng + "</observation></entryRelationship>")


def _battery_status(results: list[Result], battery: Battery) -> str:
    """XD-LAB: `active` while a result of the battery is not final (preliminary, to come, or the request's OBR-25
    says so), `aborted` when every result was cancelled, else `completed`."""
    if battery.status.strip().upper() in REQUEST_PARTIAL or any(r.state in (PRELIMINARY, PENDING) for r in results):
        return "active"
    written = [r for r in results if in_entries(r)]
    return "aborted" if written and all(r.state == CANCELLED for r in written) else "completed"


def _entries(report: LabReport, when: str, local_system: str, tz: tzinfo, vs: ValueSets, setting: str) -> str:
    """Results in order (numbered as in the narrative); consecutive results of one battery inside its BATTERY
    organizer. Only the results `in_entries` are observations."""
    out: list[str] = []
    results = list(enumerate(report.results, 1))
    i = 0
    while i < len(results):
        n, res = results[i]
        b = report.batteries[res.battery - 1] if 0 < res.battery <= len(report.batteries) else None
        if b is None or not (b.loinc or b.local_code):
            if in_entries(res):
                out.append(_observation(res, n, when, local_system, tz, report.sender, vs, setting))
            i += 1
            continue
        group, members = [], []
        while i < len(results) and results[i][1].battery == res.battery:
            n, member = results[i]
            members.append(member)
            if in_entries(member):
                obs = _observation(member, n, when, local_system, tz, report.sender, vs, setting)
                group.append(obs.replace('<entryRelationship typeCode="COMP">', "<component>", 1)
                             .removesuffix("</entryRelationship>") + "</component>")
            i += 1
        if not group:                   # every result of the battery to come or withdrawn: the narrative says so
            continue
        code = (f'<code code="{x(b.loinc)}" codeSystem="{LOINC}" codeSystemName="LOINC" '
                f'displayName="{x(b.loinc_label or b.label)}"/>' if b.loinc else
                f'<code code="{x(b.local_code)}" codeSystem="{x(local_system)}" displayName="{x(b.label)}"/>')
        notes = "".join(_comment(f"bat-{res.battery}-c{k}").replace("entryRelationship", "component")
                        for k in range(1, len(b.comments) + 1))
        out.append('<entryRelationship typeCode="COMP"><organizer classCode="BATTERY" moodCode="EVN">'
                   '<templateId root="1.3.6.1.4.1.19376.1.3.1.4"/>' + code
                   + f'<statusCode code="{_battery_status(members, b)}"/>'
                   + "".join(group) + notes + "</organizer></entryRelationship>")
    return "".join(out)


# What the narrative and the PDF copy say of a result that is not final, in place of (or beside) its value
STATE_NOTES = {PRELIMINARY: "provisoire", PENDING: "en cours", CANCELLED: "non réalisé",
               WITHDRAWN: "annulé par le laboratoire", NOT_ASKED: "non demandé"}
FILE_NOTE = "fichier du laboratoire, non transmis"
CORRECTED_NOTE = "résultat corrigé"
PARTIAL_NOTE = "Compte rendu partiel : certains résultats sont provisoires ou en cours."


def measured(res: Result) -> bool:
    """A result shown with its unit, second value and flags (the narrative and the PDF copy): an observation with a
    value, not a cancelled one."""
    return in_entries(res) and res.state != CANCELLED


def shown_value(res: Result) -> tuple[str, str]:
    """(value as shown, note) for the narrative and the PDF copy: a value that must not be read as a result (to
    come, withdrawn, not asked, a file name) is never shown; the note says what the result is."""
    if res.file_reference:
        return "", FILE_NOTE
    if res.state in (PENDING, WITHDRAWN, NOT_ASKED):
        return "", STATE_NOTES[res.state]
    if res.state == CANCELLED:          # the lab's text, if any, says why (hémolysé, prélèvement insuffisant)
        return res.value, STATE_NOTES[CANCELLED]
    value = date_display(res.value) if is_date_value(res) else res.value
    if res.corrected:
        return value, CORRECTED_NOTE
    return value, STATE_NOTES.get(res.state, "")


def _lines(text: str) -> str:
    """Text for the narrative with its line breaks kept (a TX / FT result, an NTE with `\\.br\\`): in the CDA
    narrative, only `<br/>` breaks a line."""
    return "<br/>".join(x(line) for line in text.split("\n"))


def _narrative(report: LabReport) -> str:
    rows = []
    battery = 0
    for n, res in enumerate(report.results, 1):
        if res.state == NOT_ASKED:
            continue
        if res.battery != battery and 0 < res.battery <= len(report.batteries):
            b = report.batteries[res.battery - 1]
            if b.label or b.loinc_label:
                rows.append(f'<tr><td colspan="5"><content styleCode="Bold">{x(b.label or b.loinc_label)}'
                            "</content></td></tr>")
            rows.extend(f'<tr><td colspan="5"><content ID="bat-{res.battery}-c{k}">{_lines(c)}</content></td></tr>'
                        for k, c in enumerate(b.comments, 1))
        battery = res.battery
        value, note = shown_value(res)
        notes = "".join(f'<br/><content ID="res-{n}-c{k}">{_lines(c)}</content>'
                        for k, c in enumerate(res.comments, 1))
        state = f'<content styleCode="Italics">{x(note)}</content>' if note else ""
        cell = _lines(value) + ("<br/>" if value and state else "") + state
        full = measured(res)
        second = f"<br/>{x(res.value2)} {x(res.unit2)}" if res.value2 and full else ""
        rng2 = (f"<br/>{x(res.range2_low)} - {x(res.range2_high)}" if res.range2_low and res.range2_high else "")
        flags = ", ".join(INTERPRETATION.get(f.upper(), f) for f in res.flags) if full else ""
        rows.append(f'<tr><td><content ID="res-{n}">{x(res.label or res.loinc_label or res.local_code)}</content>'
                    f"{notes}</td><td>{cell}{second}</td><td>{x(res.unit) if full else ''}</td>"
                    f"<td>{x(res.range_display)}{rng2}</td><td>{x(flags)}</td></tr>")
    partial = f'<paragraph><content styleCode="Bold">{x(PARTIAL_NOTE)}</content></paragraph>' if report.partial \
        else ""
    return ("<text>" + partial + "<table><thead><tr><th>Examen</th><th>Résultat</th><th>Unité</th>"
            "<th>Valeurs de référence</th><th>Interprétation</th></tr></thead><tbody>" + "".join(rows)
            + "</tbody></table></text>")


def _comments_section(report: LabReport, root: str, ext: str) -> str:
    if not report.comments:
        return ""
    text = "".join(f"<paragraph>{_lines(c)}</paragraph>" for c in report.comments)
    return ('<component><section><templateId root="2.16.840.1.113883.10.12.201"/>'
            '<templateId root="1.3.6.1.4.1.19376.1.4.1.2.16"/>'
            f'<id root="{x(root)}.8" extension="{x(ext)}"/>'
            '<code code="55112-7" displayName="Commentaire sur le document" codeSystem="2.16.840.1.113883.6.1" '
            f'codeSystemName="LOINC"/><title>Commentaire</title><text>{text}</text></section></component>')


def pdf_section(pdf_b64: str, root: str, ext: str) -> str:
    return (
        '<component><section><templateId root="1.2.250.1.213.1.1.2.243"/>'
        f'<id root="{x(root)}.5" extension="{x(ext)}"/>'
        '<code code="55108-5" displayName="Copie du document" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/><title>Copie du document</title><text><table><tbody><tr><td>'
        '<content ID="pdf-1">Copie du compte rendu (PDF)</content><renderMultiMedia referencedObject="doc-1"/>'
        "</td></tr></tbody></table></text>"
        '<entry><organizer classCode="CLUSTER" moodCode="EVN"><templateId root="1.2.250.1.213.1.1.3.18"/>'
        f'<id root="{x(root)}.6" extension="{x(ext)}"/>'
        '<code code="55107-7" displayName="Document attaché" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/><statusCode code="completed"/>'
        '<component><observation classCode="OBS" moodCode="EVN">'
        '<templateId root="1.3.6.1.4.1.19376.1.5.3.1.4.13"/><templateId root="1.2.250.1.213.1.1.3.48"/>'
        '<templateId root="1.2.250.1.213.1.1.3.48.18"/>'
        f'<id root="{x(root)}.7" extension="{x(ext)}"/>'
        '<code code="69764-9" displayName="Type de document" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/><text><reference value="#pdf-1"/></text><statusCode code="completed"/>'
        '<effectiveTime nullFlavor="NA"/><value xsi:type="CD" code="55108-5" displayName="Copie du document" codeSystem="2.16.840.1.113883.6.1" '
        'codeSystemName="LOINC"/></observation></component>'
        '<component><observationMedia classCode="OBS" moodCode="EVN" ID="doc-1">'
        '<value mediaType="application/pdf" representation="B64">' + pdf_b64
        + "</value></observationMedia></component></organizer></entry></section></component>")


def _requester(p: Party, tz: tzinfo, when: str, local_root: str) -> str:
    """The prescriber (participant REF): RPPS, or the laboratory's own code for him; none without an id."""
    if p.rpps:
        ident = person_id(p)
    elif p.local_code:
        ident = f'<id root="{x(local_root)}.5" extension="{x(p.local_code)}"/>'
    else:
        return ""
    time = f'<time xsi:type="IVL_TS">{ts_el("high", when, tz)}</time>' if when else ""
    return ('<participant typeCode="REF"><templateId root="1.3.6.1.4.1.19376.1.3.3.1.6"/>' + time
            + '<associatedEntity classCode="PROV">' + ident + addr_xml(p.addr) + telecom_xml(p.telecom)
            + f"<associatedPerson>{name_xml(p.family, p.given)}</associatedPerson></associatedEntity></participant>")


def build_cr_bio_n3(report: LabReport, *, doc_id_root: str, doc_id_ext: str, local_id_root: str,
                    local_code_system: str, tz: tzinfo, effective_time: str, vs: ValueSets, pdf_b64: str,
                    chapter: str = "18719-5", facility_code: str = "SA25",
                    practice_setting: str = "AMBULATOIRE") -> str:
    """pdf_b64: the PDF copy, base64 (the laboratory's, or the hub's rendering)."""
    author = report.sender
    released = report.validated_at or report.report_date or effective_time
    h = Header(doc_id_root, doc_id_ext, "11502-2", DOC_LABELS["11502-2"], TITLE, effective_time,
               ((T_HL7FR, ""), (T_CISIS, ""), (T_XDLAB, ""), (T_CRBIO, "")), "N", local_id_root,
               author_time=report.report_date or effective_time, legal_time=released)
    chapter_label = CHAPTERS.get(chapter, "Biologie")
    chapter_code = (f'<code code="{x(chapter)}" displayName="{x(chapter_label)}" codeSystem="{LOINC}" '
                    'codeSystemName="LOINC"/>')
    start = report.received_at or report.collected_at or released
    setting = coded("standardIndustryClassCode", practice_setting, PRACTICE_SETTING, vs)
    status = "active" if report.partial else "completed"      # XD-LAB: a partial report is active
    service = (
        "<documentationOf><serviceEvent>" + chapter_code + f'<lab:statusCode code="{status}"/><effectiveTime>'
        + ts_el("low", start, tz) + ts_el("high", released, tz) + "</effectiveTime>"
        + _lab_performer(author, released, tz, vs, setting) + "</serviceEvent></documentationOf>")
    order = (f'<inFulfillmentOf><order><id root="{x(local_id_root)}.9" extension="{x(report.order_id)}"/>'
             "</order></inFulfillmentOf>" if report.order_id else "")
    responsible = ("<responsibleParty><assignedEntity>" + entity(author, vs, specialty=BIOLOGY)
                   + "</assignedEntity></responsibleParty>")
    when = report.collected_at or report.report_date or effective_time
    sections = ('<templateId root="1.3.6.1.4.1.19376.1.3.3.2.2"/><templateId root="1.2.250.1.213.1.1.2.71"/>'
                + chapter_code)
    body = (
        "<component><structuredBody><component><section>"
        '<templateId root="1.3.6.1.4.1.19376.1.3.3.2.1"/><templateId root="1.2.250.1.213.1.1.2.70"/>'
        + chapter_code + f"<title>{x(chapter_label.upper())}</title>"
        + "<component><section>" + sections + _narrative(report)
        + '<entry typeCode="DRIV"><templateId root="1.3.6.1.4.1.19376.1.3.1"/>'
        '<templateId root="1.2.250.1.213.1.1.3.21"/><act classCode="ACT" moodCode="EVN">' + chapter_code
        + f'<statusCode code="{status}"/>' + _entries(report, when, local_code_system, tz, vs, setting)
        + "</act></entry></section></component></section></component>"
        + _comments_section(report, doc_id_root, doc_id_ext) + pdf_section(pdf_b64, doc_id_root, doc_id_ext)
        + "</structuredBody></component>")
    return (header_xml(h, report.patient, author, tz, vs, specialty=BIOLOGY, practice_setting=practice_setting)
            + _requester(report.requester, tz, report.collected_at, local_id_root) + order + service
            + encounter_xml(report.collected_at or start, facility_code, tz, vs, responsible) + body
            + "</ClinicalDocument>")
