"""Fixtures for the transform tests: a registry with the real CDA schema and a small LOINC map."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from lxml import etree

sys.path.insert(0, str(Path(__file__).resolve().parent))   # tx_support, whatever pytest's import mode

from tx_support import CORPUS, LOINC_CSV, SCHEMATRONS, XSD  # noqa: E402

from hub.settings import TransformSection  # noqa: E402
from hub.transform import build_registry  # noqa: E402


@pytest.fixture(scope="session")
def schema() -> etree.XMLSchema:
    return etree.XMLSchema(etree.parse(str(XSD)))


@pytest.fixture(scope="session")
def loinc_csv(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("loinc") / "map.csv"
    path.write_text(LOINC_CSV, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def settings(loinc_csv) -> TransformSection:
    return TransformSection(cda_schema=str(XSD), loinc_map=str(loinc_csv), hub_oid="1.2.250.1.999.1")


@pytest.fixture(scope="session")
def registry(settings):
    return build_registry(settings, "TESTNIL")


@pytest.fixture(scope="session")
def conformant(loinc_csv):
    """A registry that runs the ANS schematrons on every document and holds (TransformError) a failing one; the
    schematrons are compiled once per test session (the registry's per-process cache)."""
    settings = TransformSection(cda_schema=str(XSD), loinc_map=str(loinc_csv), hub_oid="1.2.250.1.999.1",
                                schematron_dir=str(SCHEMATRONS), senders=str(CORPUS / "senders.toml"))
    registry = build_registry(settings, "TESTNIL")
    registry.context.schematrons.warm()
    return registry
