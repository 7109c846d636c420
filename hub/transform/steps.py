"""What every chain shares: the immutable `Context` (compiled validators, maps, limits), the `Steps` recorder and
the `StepRecord` / `TransformOutcome` results. No chain and no registry here: `chains.py` composes the parsers and
builders with these, `registry.py` names the chains (so neither imports the other in a circle).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from hub.errors import TransformError
from hub.transform.parse.text import clean
from hub.transform.senders import SenderProfiles
from hub.transform.terminology.loinc import LoincMap
from hub.transform.terminology.valuesets import ValueSets
from hub.transform.validate.schematron import IsolatedSchematrons, Schematrons
from hub.transform.validate.xmlsafe import CdaValidator, SafeXml


@dataclass(frozen=True)
class StepRecord:
    name: str
    version: str
    input_sha256: str
    output_sha256: str
    validation: str                    # "valid" | "invalid: <first error>" | "not_validated"
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransformOutcome:
    message: bytes
    steps: list[StepRecord]
    patient_ins: str | None = None     # for the audit's keyed hash only: never log it
    patient_ins_oid: str | None = None
    doc_codes: list[str] = field(default_factory=list)
    recipients: list[str] = field(default_factory=list)
    ack: bytes | None = None           # HL7 ACK to return to a CI-SIS sender

    @property
    def warnings(self) -> list[str]:
        return [w for s in self.steps for w in s.warnings]


@dataclass(frozen=True)
class Context:
    """Everything a chain may use; immutable, shared by every call."""
    hub_oid: str
    nil: str
    validator: CdaValidator
    xml: SafeXml
    loinc: LoincMap
    max_zip_entries: int
    max_zip_expanded: int
    schematrons: Schematrons | IsolatedSchematrons = field(default_factory=lambda: Schematrons(""))
    value_sets: ValueSets = field(default_factory=ValueSets)
    senders: SenderProfiles = field(default_factory=SenderProfiles)
    on_nonconformant: str = "hold"     # "hold": a failed ANS assertion fails the chain; "warn": sent, with a warning


class Steps:
    """Collects StepRecords while a chain runs."""

    def __init__(self) -> None:
        self.records: list[StepRecord] = []
        # one output is the next step's input, one input may feed several steps: hash each once. Only the two
        # latest are kept, so the chain's big intermediate buffers are not all pinned until it ends.
        self._hashes: list[tuple[bytes, str]] = []

    def sha256(self, data: bytes) -> str:
        for known in self._hashes:
            if known[0] is data:
                self._hashes.remove(known)
                self._hashes.append(known)
                return known[1]
        digest = hashlib.sha256(data).hexdigest()
        self._hashes = [*self._hashes[-1:], (data, digest)]
        return digest

    def known(self, data: bytes, digest: str) -> None:
        """The caller has already hashed `data` (hex SHA-256): reuse it."""
        self._hashes = [*self._hashes[-1:], (data, digest)]

    def add(self, name: str, version: str, data_in: bytes, data_out: bytes, validation: str = "not_validated",
            warnings: list[str] | tuple[str, ...] = ()) -> None:
        self.records.append(StepRecord(name, version, self.sha256(data_in), self.sha256(data_out), clean(validation),
                                       tuple(clean(w, 500) for w in warnings)))

    def fail(self, name: str, version: str, data_in: bytes, exc: TransformError) -> TransformError:
        validation = clean(getattr(exc, "validation", "") or f"invalid: {exc}")
        self.records.append(StepRecord(name, version, self.sha256(data_in), "", validation, ()))
        exc.steps = list(self.records)
        exc.validation = validation
        return exc


Chain = Callable[[Context, bytes, Mapping[str, Any]], TransformOutcome]
