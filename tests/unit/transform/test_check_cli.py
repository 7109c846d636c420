"""`hub transform check FILE`: what an operator runs before switching a new lab on; exit 0 conformant, 1 not
conformant or not proven so (no CDA schema or ANS rules configured), 2 unusable file (missing, unreadable, not recognised, malformed)."""

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


def test_a_check_that_ran_no_validator_is_never_a_green_light(tmp_path, capsys):
    """Without the CDA schema or the ANS rules configured, nothing failed but nothing proved the document
    conformant: the report said "result: conformant" and exited 0, which an operator read as cleared to switch on."""
    bare = tmp_path / "bare.toml"
    bare.write_text(f'[transform]\nsenders = "{CORPUS / "senders.toml"}"\n')
    half = tmp_path / "half.toml"
    half.write_text(f'[transform]\ncda_schema = "{XSD}"\nsenders = "{CORPUS / "senders.toml"}"\n')
    sample = str(CORPUS / "hs_alpha_hemato.hpr")
    assert main(["--config", str(bare), "transform", "check", sample, "--account", "labo-alpha"]) == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("result: NOT proven conformant") and "cda_schema" in last and "schematron_dir" in last
    assert main(["--config", str(half), "transform", "check", sample, "--account", "labo-alpha"]) == 1
    last = capsys.readouterr().out.rstrip().splitlines()[-1]
    assert last.startswith("result: NOT proven conformant") and "schematron_dir" in last and "cda_schema" not in last


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


@pytest.mark.parametrize("settings, names", [
    ({"schematron_dir": "/nonexistent/schematrons"}, "transform.schematron_dir: /nonexistent/schematrons/"),
    ({"value_sets": ["/nonexistent/jdv"]}, "transform.value_sets: /nonexistent/jdv"),
    ({"senders": "/nonexistent/senders.toml"}, "transform.senders: cannot read /nonexistent/senders.toml"),
])
def test_a_transform_misconfiguration_stops_at_start_naming_the_setting(settings, names):
    from hub.errors import ConfigError
    from hub.settings import TransformSection
    from hub.transform import build_registry

    with pytest.raises(ConfigError, match=names.replace(".", r"\.")):
        build_registry(TransformSection(**settings), "NIL")


@pytest.mark.parametrize("text, names", [
    ('[lab]\nins_oid = "1.2.3"\n', "[lab] ins_oid '1.2.3' is not an INS OID"),
    ('[lab]\norg_fines = "1"\n', "[lab] unknown key 'org_fines'"),
    ('[lab]\n[lab.metadata_map]\n"patient.birth_name" = 3\n', "[lab.metadata_map] must map model paths"),
    ("[lab\n", "cannot read"),
])
def test_a_bad_sender_profile_is_refused_with_file_and_account(tmp_path, text, names):
    from hub.errors import ConfigError
    from hub.settings import TransformSection
    from hub.transform import build_registry

    path = tmp_path / "senders.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        build_registry(TransformSection(senders=str(path)), "NIL")
    assert str(path) in str(err.value) and names in str(err.value)


def test_on_nonconformant_accepts_hold_or_warn_only(tmp_path):
    from hub.errors import ConfigError
    from hub.settings import load

    path = tmp_path / "hub.toml"
    path.write_text('[transform]\non_nonconformant = "ignore"\n')
    with pytest.raises(ConfigError, match="transform.on_nonconformant: expected hold or warn"):
        load(str(path))


def test_out_writes_what_the_gp_would_receive(config, tmp_path, capsys):
    """--out DIR: the produced mail, its IHE_XDM.zip and each CDA, for reading before a sender is switched on."""
    out = tmp_path / "produced"
    assert main(["--config", config, "transform", "check", str(CORPUS / "hs_alpha_hemato.hpr"),
                 "--account", "labo-alpha", "--out", str(out)]) == 0
    assert f"written to {out}: message.eml, IHE_XDM.zip, document-1.xml" in capsys.readouterr().out
    cda = (out / "document-1.xml").read_bytes()
    assert b"<ClinicalDocument" in cda and b"11502-2" in cda
    assert (out / "IHE_XDM.zip").read_bytes()[:2] == b"PK" and b"IHE_XDM.zip" in (out / "message.eml").read_bytes()
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["--config", config, "transform", "check", str(CORPUS / "hs_alpha_hemato.hpr"),
                 "--account", "labo-alpha", "--out", str(blocker / "sub")]) == 2
    assert "--out" in capsys.readouterr().err
