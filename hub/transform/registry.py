"""The registry of named transform chains: `build_registry(settings, nil) -> Registry`, then
`registry.apply(name, message, params) -> TransformOutcome`.

Built once by the composition root (no module-level registry): it compiles the CDA schema and reads the LOINC map
(settings `transform.cda_schema`, `transform.loinc_map`, `transform.hub_oid`, `transform.max_zip_entries`,
`transform.max_zip_expanded`, `transform.max_xml_depth`, `transform.schematron_dir`, `transform.value_sets`,
`transform.on_nonconformant`, `transform.senders`) and the NIL value (`hub.nil`). `apply` is a pure, CPU-bound
function (run it off the event loop). Errors: ParseError for malformed input, TransformError when no valid document
can be produced (its `.steps` and `.validation` say why); any foreign exception is mapped to TransformError here.
"""

from __future__ import annotations

import atexit
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from hub.errors import HubError, ParseError, TransformError
from hub.settings import TransformSection
from hub.transform.chains import CDA_CHAINS, CHAINS
from hub.transform.parse import metadata as md
from hub.transform.parse.text import clean
from hub.transform.senders import SenderProfiles
from hub.transform.steps import Chain, Context, StepRecord, TransformOutcome
from hub.transform.terminology.loinc import LoincMap
from hub.transform.terminology.valuesets import ValueSets, default_paths
from hub.transform.validate.schematron import IsolatedSchematrons, Schematrons
from hub.transform.validate.service import SharedSchematrons
from hub.transform.validate.xmlsafe import CdaValidator, SafeXml

__all__ = ["Registry", "StepRecord", "TransformOutcome", "build_registry"]


class Registry:
    def __init__(self, chains: Mapping[str, Chain], context: Context):
        self._chains = MappingProxyType(dict(chains))
        self.context = context

    def names(self) -> frozenset[str]:
        return frozenset(self._chains)

    def apply(self, name: str, message: bytes, params: Mapping[str, Any] | None = None, *,
              account: str | None = None) -> TransformOutcome:
        """`account`: the sending establishment (its sender profile gives the constants and default params that the
        rule's params override)."""
        chain = self._chains.get(name)
        if chain is None:
            raise TransformError(f"unknown transform chain {name!r} (known: {', '.join(sorted(self._chains))})")
        sender = self.context.senders.get(account)
        params = {**sender.params, **(params or {}), "sender": sender}
        try:
            return chain(self.context, message, params)
        except ParseError as exc:    # what is recorded never carries NUL nor lone surrogates
            raise ParseError(clean(exc.args[0] if exc.where is None else str(exc).split(": ", 1)[-1], 500),
                             where=clean(exc.where, 200) if exc.where else None) from exc
        except TransformError as exc:
            if "\x00" in str(exc) or any(0xD800 <= ord(ch) <= 0xDFFF for ch in str(exc)):
                clean_exc = TransformError(clean(str(exc), 500))
                clean_exc.steps, clean_exc.validation = getattr(exc, "steps", []), clean(
                    getattr(exc, "validation", ""))
                raise clean_exc from exc
            raise
        except HubError:
            raise
        except Exception as exc:     # the stage boundary: no foreign exception goes further
            raise TransformError(f"chain {name} failed: {type(exc).__name__}") from exc


def build_registry(settings: TransformSection, nil: str) -> Registry:
    """Compiles the CDA schema, reads the LOINC map, the value sets and the sender profiles; the schematrons are
    compiled on first use (call `registry.context.schematrons.warm()` at start-up to pay it before traffic)."""
    value_sets = ValueSets.from_paths(list(settings.value_sets) or default_paths(settings.schematron_dir))
    context = Context(hub_oid=settings.hub_oid, nil=nil, validator=CdaValidator(settings.cda_schema),
                      xml=SafeXml(settings.max_xml_depth), loinc=LoincMap.from_file(settings.loinc_map),
                      max_zip_entries=settings.max_zip_entries, max_zip_expanded=settings.max_zip_expanded,
                      schematrons=_schematrons(settings.schematron_dir), value_sets=value_sets,
                      senders=SenderProfiles.from_file(settings.senders, md.KEYS),
                      on_nonconformant=settings.on_nonconformant)
    return Registry(CHAINS, context)


def unchecked_chains(registry: Registry, rules) -> list[str]:
    """The chains of this rule set (hub.rules RuleSet) that produce or relay a CDA while no ANS schematron
    folder is configured: their documents would go out with no conformance check (the hub warns, see
    hub.app and deploy/alerts.yml)."""
    if registry.context.schematrons.enabled or rules is None:
        return []
    return sorted({r.actions.transform.chain for r in rules.rules if r.actions.transform is not None} & CDA_CHAINS)


UNCHECKED = ("transform.schematron_dir is empty: the CDAs of chains {chains} go out without the ANS conformance "
             "check (deploy/README.md, \"ANS conformance rules\")")


_COMPILED: dict[str, IsolatedSchematrons] = {}


@atexit.register
def _close_validators() -> None:
    for validator in _COMPILED.values():
        validator.close()


_SHARED: dict[str, list[tuple[str, tuple[str, ...]]]] = {}


def use_shared_validators(folder: str, addresses: list[tuple[str, tuple[str, ...]]]) -> None:
    """`hub serve`: the registries of this process and of the worker processes it forks use the node's validator
    processes (hub.transform.validate.service) for this rules folder, instead of starting their own."""
    _SHARED[str(Path(folder).resolve())] = addresses


def _schematrons(folder: str) -> Schematrons | IsolatedSchematrons | SharedSchematrons:
    """One compiled set per folder and process, in its own child process (SaxonC holds the GIL while it runs):
    building a second registry (tests, `hub rules check`) reuses it. Under `hub serve`: the node's shared
    validator processes."""
    if not folder:
        return Schematrons("")
    key = str(Path(folder).resolve())
    if key in _SHARED:
        return SharedSchematrons(folder, _SHARED[key])
    found = _COMPILED.get(key)
    if found is None:
        found = _COMPILED[key] = IsolatedSchematrons(folder)
    return found
