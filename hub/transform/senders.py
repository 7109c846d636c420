"""Sender profiles: the constants that belong to a sending establishment, not to each rule (setting
`transform.senders`: a TOML file, one table per account name as created by `hub accounts add NAME`).

    [labo-bioxa]
    org_finess = "690000001"              # the laboratory's FINESS (9 characters, or 10 with the leading 1)
    org_name = "Laboratoire Bioxa"
    org_addr = ["12 rue des Lilas", "69003 LYON"]
    org_telecom = "tel:+33472000000"
    ins_oid = "1.2.250.1.213.1.4.8"       # INS policy: the OID of the INS numbers this sender sends without one
                                          # ("none": its NIRs are not qualified INS and are never sent as such)
    chapter = "18723-7"                   # default params of its chains
    [labo-bioxa.metadata_map]             # PDF letters: model path = the sender's own JSON path
    "patient.birth_name" = "patient.identity.birthName"

Every key other than `ins_oid`, `metadata_map` and the chain params (`chapter`, `doc_code`, `title`, `tz`) is a
metadata key (docs/transform.md §3) used as the lowest layer: the document's own metadata, the `X-Hub-*` headers and
a rule's `params.metadata` override it. A malformed file is a ConfigError naming the file and the account
(start-up check).
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from hub.errors import ConfigError
from hub.settings import toml_text
from hub.transform.model import INS_OIDS

PARAM_KEYS = frozenset({"chapter", "doc_code", "title", "tz"})


@dataclass(frozen=True)
class SenderProfile:
    name: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    ins_oid: str = ""                      # "" no policy, an INS OID, or "none"
    metadata_map: Mapping[str, str] = field(default_factory=dict)
    params: Mapping[str, Any] = field(default_factory=dict)


class SenderProfiles:
    def __init__(self, profiles: dict[str, SenderProfile] | None = None, source: str = ""):
        self._profiles = MappingProxyType(dict(profiles or {}))
        self.source = source

    def __len__(self) -> int:
        return len(self._profiles)

    def names(self) -> list[str]:
        return sorted(self._profiles)

    def get(self, account: str | None) -> SenderProfile:
        return self._profiles.get(account or "", SenderProfile(name=account or ""))

    @classmethod
    def from_file(cls, path: str, known_keys: frozenset[str] = frozenset()) -> "SenderProfiles":
        if not path:
            return cls()
        try:
            with open(path, "rb") as fh:
                data = toml_text(fh.read(), path)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"transform.senders: cannot read {path}: {exc}") from None
        profiles = {}
        for name, table in data.items():
            if not isinstance(table, dict):
                raise ConfigError(f"{path}: [{name}] must be a table of the sender's constants")
            profiles[name] = _profile(path, name, table, known_keys)
        return cls(profiles, path)


def _profile(path: str, name: str, table: dict, known_keys: frozenset[str]) -> SenderProfile:
    table = dict(table)
    ins_oid = str(table.pop("ins_oid", "") or "")
    if ins_oid and ins_oid != "none" and ins_oid not in INS_OIDS:
        raise ConfigError(f"{path}: [{name}] ins_oid {ins_oid!r} is not an INS OID (or \"none\")")
    mapping = table.pop("metadata_map", {}) or {}
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise ConfigError(f"{path}: [{name}.metadata_map] must map model paths to the sender's JSON paths")
    params = {k: table.pop(k) for k in list(table) if k in PARAM_KEYS}
    unknown = sorted(k for k in table if known_keys and k not in known_keys)
    if unknown:
        raise ConfigError(f"{path}: [{name}] unknown key {unknown[0]!r} (metadata keys: docs/transform.md §3)")
    for key, value in table.items():
        if not isinstance(value, (str, int, list)):
            raise ConfigError(f"{path}: [{name}] {key} must be a string (or a list of address lines)")
    if known_keys:
        _check_values(path, name, table, mapping, params)
    return SenderProfile(name=name, metadata=MappingProxyType(table), ins_oid=ins_oid,
                         metadata_map=MappingProxyType(dict(mapping)), params=MappingProxyType(params))


_SENDER_PATH = re.compile(r"[^.\[\]=]+(?:\.[^.\[\]=]+|\[\d+\]|\[[^=\]]+=[^\]]*\])*")


def _check_values(path: str, name: str, table: dict, mapping: dict, params: dict) -> None:
    """At start-up, not at the sender's first message: each constant as a document's metadata would be checked, each
    mapping a model path to a JSON path, each chain param as a rule's."""
    from zoneinfo import ZoneInfo

    from hub.errors import ParseError
    from hub.transform.build.cda_bio import CHAPTERS
    from hub.transform.parse import metadata as md

    try:
        md.merge(table)
    except ParseError as exc:
        raise ConfigError(f"{path}: [{name}] {exc}") from None
    for model, source in mapping.items():
        if model not in md.MODEL:
            raise ConfigError(f"{path}: [{name}.metadata_map] {model!r} is not a path of the metadata model "
                              "(docs/transform.md §3)")
        if not _SENDER_PATH.fullmatch(source):
            raise ConfigError(f"{path}: [{name}.metadata_map] {model}: {source!r} is not a JSON path "
                              "(a.b, a[0].b, list[key=value].b)")
    if "chapter" in params and str(params["chapter"]) not in CHAPTERS:
        raise ConfigError(f"{path}: [{name}] chapter {params['chapter']!r} is not a CR-BIO chapter "
                          f"(one of {', '.join(sorted(CHAPTERS))})")
    if "doc_code" in params and not re.fullmatch(r"\d{1,7}-\d", str(params["doc_code"])):
        raise ConfigError(f"{path}: [{name}] doc_code {params['doc_code']!r} is not a LOINC code")
    if "tz" in params:
        try:
            ZoneInfo(str(params["tz"]))
        except (ValueError, KeyError, OSError):
            raise ConfigError(f"{path}: [{name}] tz {params['tz']!r} is not a time zone (e.g. Europe/Paris)") from None
