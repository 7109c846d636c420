"""The registry of named transform chains: `build_registry(settings, nil) -> Registry`, then
`registry.apply(name, message, params) -> TransformOutcome`.

Built once by the composition root (no module-level registry): it compiles the CDA schema and reads the LOINC map
(settings `transform.cda_schema`, `transform.loinc_map`, `transform.hub_oid`, `transform.max_zip_entries`,
`transform.max_zip_expanded`, `transform.max_xml_depth`) and the NIL value (`hub.nil`). `apply` is a pure, CPU-bound
function (run it off the event loop). Errors: ParseError for malformed input, TransformError when no valid document
can be produced (its `.steps` and `.validation` say why); any foreign exception is mapped to TransformError here.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any, Mapping

from hub.errors import HubError, TransformError
from hub.settings import TransformSection
from hub.transform.chains import CHAINS
from hub.transform.steps import Chain, Context, StepRecord, TransformOutcome
from hub.transform.terminology.loinc import LoincMap
from hub.transform.validate.xmlsafe import CdaValidator, SafeXml

__all__ = ["Registry", "StepRecord", "TransformOutcome", "build_registry"]


class Registry:
    def __init__(self, chains: Mapping[str, Chain], context: Context):
        self._chains = MappingProxyType(dict(chains))
        self.context = context

    def names(self) -> frozenset[str]:
        return frozenset(self._chains)

    def apply(self, name: str, message: bytes, params: Mapping[str, Any] | None = None) -> TransformOutcome:
        chain = self._chains.get(name)
        if chain is None:
            raise TransformError(f"unknown transform chain {name!r} (known: {', '.join(sorted(self._chains))})")
        try:
            return chain(self.context, message, params or {})
        except HubError:
            raise
        except Exception as exc:     # the stage boundary: no foreign exception goes further
            raise TransformError(f"chain {name} failed: {type(exc).__name__}: {exc}") from exc


def build_registry(settings: TransformSection, nil: str) -> Registry:
    context = Context(hub_oid=settings.hub_oid, nil=nil, validator=CdaValidator(settings.cda_schema),
                      xml=SafeXml(settings.max_xml_depth), loinc=LoincMap.from_file(settings.loinc_map),
                      max_zip_entries=settings.max_zip_entries, max_zip_expanded=settings.max_zip_expanded)
    return Registry(CHAINS, context)
