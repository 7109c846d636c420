"""The in-house model every lab parser produces and every CDA builder consumes.

HPRIM Santé, HPRIM Net and HL7 v2 LAB-3 ORU all land in `LabReport`; the PDF chain lands in `DocumentMeta`.
Plain frozen dataclasses: no parsing, no I/O, no settings. Dates are kept as the sender wrote them, normalised to
`YYYYMMDD[HHMM[SS]]` digits (time zone added at CDA build time, see `hub.transform.terminology.dates.cda_ts`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from hub.errors import ParseError

# Production and test INS OIDs (FORMATS.md §4.5)
INS_NIR = "1.2.250.1.213.1.4.8"
INS_NIA = "1.2.250.1.213.1.4.9"
INS_NIR_TEST = "1.2.250.1.213.1.4.10"
INS_NIA_TEST = "1.2.250.1.213.1.4.11"
INS_OIDS = frozenset({INS_NIR, INS_NIA, INS_NIR_TEST, INS_NIA_TEST})
OID_RPPS = "1.2.250.1.71.4.2.1"       # IdNatPS, extension 8+RPPS
OID_STRUCT = "1.2.250.1.71.4.2.2"     # IdNatStruct, extension 1+FINESS
LOINC = "2.16.840.1.113883.6.1"
_LOINC_SYSTEMS = frozenset({"LN", "LOINC", LOINC})     # the names senders give LOINC in a coded field
_NIR = re.compile(r"[1-478]\d{4}(?:\d{2}|2[AB])\d{8}")


# What a result's status (HL7 OBX-11, table 0085; HPRIM Santé OBX-11 and HPRIM Net field 9 use the same letters)
# makes of it in the report: FINAL and PRELIMINARY results have a value (a preliminary one is not validated yet);
# a PENDING one has none yet (results to come); a CANCELLED one will never come (cannot be obtained); a WITHDRAWN
# one was deleted or posted in error (its value must not be shown); a NOT_ASKED one was not part of the request.
FINAL, PRELIMINARY, PENDING, CANCELLED, WITHDRAWN, NOT_ASKED = ("final", "preliminary", "pending", "cancelled",
                                                                 "withdrawn", "not_asked")
RESULT_STATES = {"F": FINAL, "C": FINAL, "U": FINAL, "P": PRELIMINARY, "R": PRELIMINARY, "S": PRELIMINARY,
                 "I": PENDING, "O": PENDING, "X": CANCELLED, "D": WITHDRAWN, "W": WITHDRAWN, "N": NOT_ASKED}
# A request's status (HL7 OBR-25, table 0123; HPRIM Santé OBR-25): final, partial (some results not final or still
# to come), or cancelled (no results: order cancelled). Empty: as its results say.
REQUEST_FINAL = frozenset({"", "F", "C"})
REQUEST_PARTIAL = frozenset({"O", "I", "S", "A", "P", "R"})
REQUEST_CANCELLED = frozenset({"X"})
REQUEST_STATES = REQUEST_FINAL | REQUEST_PARTIAL | REQUEST_CANCELLED


def request_status(value: str, where: str) -> str:
    """OBR-25 as read (HL7 and HPRIM Santé): one the hub does not know is refused, never read as final."""
    status = value.strip().upper()
    if status not in REQUEST_STATES:
        raise ParseError(f"OBR-25 (result status) {status[:3]!r} is not a status of HL7 table 0123 "
                         "(F, C, P, A, I, S, O, R, X)", where=where)
    return status


def result_status(value: str, where: str) -> str:
    """A result's status as read (HL7 OBX-11, HPRIM Santé OBX-11, HPRIM Net field 9; empty: final): one the hub
    does not know is refused, never read as final."""
    status = value.strip().upper() or "F"
    if status not in RESULT_STATES:
        raise ParseError(f"result status {status[:3]!r} is not a status of HL7 table 0085 "
                         "(F, C, U, P, R, S, I, O, X, D, W, N)", where=where)
    return status


def distinct_flags(flags: Iterable[str]) -> tuple[str, ...]:
    """Abnormal flags as read from OBX-8 repeats and components: every one, in order, each once."""
    return tuple(dict.fromkeys(f.strip() for f in flags if f.strip()))


def birth_given_names(first: str, listed: str) -> str:
    """All birth given names from the first one and the list a sender gives beside it (HL7 PID-5.3, HPRIM P-5.3):
    the list already starts with the first given name in the French profiles; when it does not, it holds the
    other names."""
    first, listed = first.strip(), " ".join(listed.split())
    if not listed or listed.split(" ")[0] == first or not first:
        return listed or first
    return f"{first} {listed}"


def is_loinc_system(name: str) -> bool:
    """The coding system of an HPRIM / HL7 coded field names LOINC (`LN`, HL7 table 0396; also `LOINC` or its OID)."""
    return name.strip().upper() in _LOINC_SYSTEMS


def is_nir(value: str) -> bool:
    """15-character NIR/NIA shape (sex, year, month, department incl. 2A/2B, commune, order, key)."""
    return bool(_NIR.fullmatch(value))


@dataclass(frozen=True)
class Patient:
    local_id: str = ""                # id at the sender (lab file / IPP)
    ins: str = ""                     # 15-character INS (NIR or NIA) when known
    ins_oid: str = ""                 # one of INS_OIDS when the sender asserted an INS
    family: str = ""                  # birth name
    given: str = ""                   # all birth given names, space separated (first one = first given name)
    used_family: str = ""             # nom utilisé (when different from the birth name)
    birth_date: str = ""              # YYYYMMDD
    sex: str = ""                     # M / F / U
    address: tuple[str, ...] = ()     # street, city, postcode
    first_name: str = ""              # premier prénom de l'acte de naissance, when the sender gives it apart
    used_given: str = ""              # prénom utilisé
    birth_place_cog: str = ""         # INSEE COG code of the birth commune (99xxx: country)
    birth_place_city: str = ""
    local_id_oid: str = ""            # OID of the sender's patient id domain (IPP), when the sender gives it

    @property
    def first_given(self) -> str:
        return self.first_name or (self.given.split(" ")[0] if self.given else "")

    @property
    def qualified_ins(self) -> bool:
        """MSSanté "INS qualifié": number + OID + birth name + first given + birth date + sex (MSSANTE.md §3.1)."""
        return bool(len(self.ins) == 15 and self.ins_oid in INS_OIDS and self.family and self.first_given
                    and len(self.birth_date) == 8 and self.sex in ("M", "F", "U"))


@dataclass(frozen=True)
class Party:
    """A person (RPPS) and/or an organisation (FINESS)."""
    rpps: str = ""                    # 11-digit RPPS, without the leading 8
    family: str = ""
    given: str = ""
    local_code: str = ""              # code at the sender when no RPPS
    org_finess: str = ""              # 9-digit FINESS, without the leading 1
    org_name: str = ""
    addr: tuple[str, ...] = ()        # address lines (the organisation's, for a laboratory)
    telecom: str = ""                 # URI: tel:..., mailto:...
    specialty: str = ""               # TRE_G15/R38 code, e.g. G15_10/SM03 (biologie médicale)


@dataclass(frozen=True)
class Result:
    local_code: str
    label: str
    value: str
    value_type: str = "NM"            # NM, ST, TX, CE, SN
    unit: str = ""
    range_low: str = ""
    range_high: str = ""
    range_text: str = ""
    flags: tuple[str, ...] = ()       # N, L, H, LL, HH, A, AA... (OBX-8 repeats: `H~A`)
    status: str = "F"                 # OBX-11 (RESULT_STATES)
    observed_at: str = ""             # YYYYMMDD[HHMM[SS]]: specimen / observation time (OBX-14)
    comments: tuple[str, ...] = ()
    code_system: str = "L"            # "L" local, "LN" LOINC
    loinc: str = ""
    loinc_label: str = ""
    ucum: str = ""
    analysed_at: str = ""             # time of the analysis (HL7 OBX-19)
    range_low_open: bool = False      # "> 60": the bound itself is outside the range
    range_high_open: bool = False     # "< 3.0"
    value2: str = ""                  # HPRIM Net second value and unit (conversion, e.g. g/l beside mmol/l)
    unit2: str = ""
    ucum2: str = ""
    range2_low: str = ""
    range2_high: str = ""
    battery: int = 0                  # 1-based index in LabReport.batteries; 0: none
    observer: "Party | None" = None   # the biologist who validated this result (OBX-16 / OBX-25), when given

    @property
    def flag(self) -> str:
        """The first abnormal flag (the only one, for most results)."""
        return self.flags[0] if self.flags else ""

    @property
    def state(self) -> str:
        """FINAL, PRELIMINARY, PENDING, CANCELLED, WITHDRAWN or NOT_ASKED (the parsers refuse other statuses)."""
        return RESULT_STATES.get(self.status.strip().upper(), FINAL)

    @property
    def corrected(self) -> bool:
        """OBX-11 C: a final result that corrects one the laboratory sent before."""
        return self.status.strip().upper() == "C"

    @property
    def file_reference(self) -> bool:
        """HPRIM OBX type FIC, HL7 OBX type RP (reference pointer): the value names a file (an image, a PDF) or
        where to fetch it, not a result."""
        return self.value_type in ("FIC", "RP")

    @property
    def range_display(self) -> str:
        """The reference range as the laboratory wrote it, else from its bounds (`< 3.0`, `>= 60`, `4.1 - 5.9`)."""
        if self.range_text:
            return self.range_text
        if self.range_low and self.range_high:
            return f"{self.range_low} - {self.range_high}"
        if self.range_high:
            return ("< " if self.range_high_open else "<= ") + self.range_high
        if self.range_low:
            return ("> " if self.range_low_open else ">= ") + self.range_low
        return ""


@dataclass(frozen=True)
class Battery:
    """A requested battery (HL7 OBR-4): its code as the sender gave it, LOINC when known."""
    local_code: str = ""
    label: str = ""
    loinc: str = ""
    loinc_label: str = ""
    status: str = ""                  # OBR-25 (REQUEST_STATES); empty: not given
    comments: tuple[str, ...] = ()    # NTE after the OBR (HPRIM: C after the OBR): on this request


@dataclass(frozen=True)
class LabReport:
    patient: Patient
    sender: Party                     # the laboratory (and validating biologist if known)
    requester: Party = field(default_factory=Party)
    receiver: Party = field(default_factory=Party)
    order_id: str = ""
    lab_file: str = ""
    collected_at: str = ""
    received_at: str = ""
    report_date: str = ""             # the report's own time (validation / OBR-22), the CDA author time
    results: tuple[Result, ...] = ()
    comments: tuple[str, ...] = ()
    status: str = "F"
    source: str = ""                  # "hprim_sante", "hprim_net", "hl7_oru"
    batteries: tuple[Battery, ...] = ()
    validated_at: str = ""            # last validation by the biologist, when given apart from report_date
    pdf: bytes = b""                  # the lab's PDF of the report, when the lab file carries it (HL7 OBX ED)

    @property
    def partial(self) -> bool:
        """A partial report (CR-BIO `active`): a request not final (OBR-25), or a result preliminary or to come."""
        return (self.status.strip().upper() in REQUEST_PARTIAL
                or any(b.status.strip().upper() in REQUEST_PARTIAL for b in self.batteries)
                or any(r.state in (PRELIMINARY, PENDING) for r in self.results))

    def with_results(self, results: tuple[Result, ...]) -> "LabReport":
        return replace(self, results=results)


@dataclass(frozen=True)
class DocumentMeta:
    """Header of a CDA built by the hub (N1 from a PDF; also used to complete lab reports)."""
    patient: Patient
    author: Party
    doc_code: str = "11490-0"
    doc_label: str = ""
    title: str = ""
    effective_time: str = ""          # creation time
    service_start: str = ""
    service_stop: str = ""
    confidentiality: str = "N"
    facility_code: str = "SA01"
    practice_setting: str = "ETABLISSEMENT"
    author_specialty: str = ""        # e.g. G15_10/SM26
    author_time: str = ""             # when the author wrote it (default: effective_time)
    doc_id_root: str = ""             # the sender's document id (else the hub derives one)
    doc_id_ext: str = ""
    set_id_root: str = ""
    set_id_ext: str = ""
    version: int = 1
    gp: Party | None = None           # médecin traitant (participant INF / PCP)
    encounter_id_root: str = ""
    encounter_id_ext: str = ""
