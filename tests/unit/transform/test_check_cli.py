"""`hub transform check FILE`: what an operator runs before switching a new lab on; exit 0 conformant, 1 not
conformant, 2 unusable file (missing, unreadable, not recognised, malformed)."""

from __future__ import annotations

import pytest
from tx_support import CORPUS, SCHEMATRONS, XSD, corpus, make_pdf

from hub.cli import main


@pytest.fixture
def config(tmp_path, loinc_csv):
    path = tmp_path / "hub.toml"
    path.write_text(f'[transform]\ncda_schema = "{XSD}"\nschematron_dir = "{SCHEMATRONS}"\n'
                    f'senders = "{CORPUS / "senders.toml"}"\nloinc_map = "{loinc_csv}"\n')
    return str(path)


def test_a_conformant_lab_file_exits_0_with_a_readable_report(config, capsys):
    assert main(["--config", config, "transform", "check", str(CORPUS / "hs_alpha_hemato.hpr"),
                 "--account", "labo-alpha"]) == 0
    out = capsys.readouterr().out
    assert "detected: hprim_sante" in out and "chain: hprim_to_cda_xdm (account labo-alpha)" in out
    assert "step cda_schematron: conformant (5 schematrons)" in out
    assert "CDA schema: valid" in out and "0 failed assertions" in out and out.rstrip().endswith("result: conformant")


def test_a_lab_without_its_constants_exits_1_naming_each_failed_rule(config, capsys):
    assert main(["--config", config, "transform", "check", str(CORPUS / "hs_gamma_serologie.hpr")]) == 1
    out = capsys.readouterr().out
    assert "[ASIP-STRUCT-MIN-StrucMin.sch]" in out and "at /ClinicalDocument/author/assignedAuthor/id" in out
    assert "result: NOT conformant" in out


def test_a_letter_with_its_metadata_file(config, tmp_path, capsys):
    pdf = tmp_path / "lettre.pdf"
    pdf.write_bytes(make_pdf())
    assert main(["--config", config, "transform", "check", str(pdf), "--metadata",
                 str(CORPUS / "letter_nested.json")]) == 0
    assert "chain: pdf_to_cda_n1_xdm" in capsys.readouterr().out


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    (b"bonjour\n", "the file carries nothing the hub transforms (detected: other)"),
    (corpus("hs_alpha_hemato.hpr")[:300], "HPRIM Santé: no L (end) record: the file is incomplete"),
])
def test_an_unusable_file_exits_2_with_the_reason(config, tmp_path, capsys, content, expected):
    path = tmp_path / "sample.txt"
    if content is not None:
        path.write_bytes(content)
    assert main(["--config", config, "transform", "check", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hub: error: ") and expected in err and "Traceback" not in err
