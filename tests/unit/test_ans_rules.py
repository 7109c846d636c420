"""scripts/ans-rules --repair: the two files the ANS rules need outside Windows (../shared/schematrons/ansforge/
SOURCES.md), rebuilt in a copy laid out as the ANS repository is at the tested commit (the clone itself needs the
internet: not run here)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from lxml import etree

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "schematrons" / "ansforge"
ENTREES = Path("schematrons/include/entrees")
VOC = Path("schematrons/profils/structurationMinimale/include/voc-1.2.250.1.213.1.1.5.471-DYNAMIC.xml")
# what the structuration minimale rules read from the value-set file (include/1.2.250.1.213.1.1.1.1-2017-12-13T103531.sch)
CODES = "/*/valueSet/conceptList/concept/@code"

pytestmark = pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/schematrons/ansforge")


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "scripts" / "ans-rules"), *args], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable}, timeout=60)


@pytest.fixture
def ans_copy(tmp_path: Path) -> Path:
    """The rules as the ANS commit has them: the include with a lower-case a only, no value-set file 471."""
    root = tmp_path / "TestContenuCDA-3-0"
    shutil.copytree(SHARED, root)
    shutil.copytree(SHARED.parents[1] / "schemas" / "cda", root / "infrastructure" / "cda")   # as in the ANS tree
    (root / ENTREES / "E_directiveAnticipee_int.sch").rename(root / ENTREES / "E_directiveanticipee_int.sch")
    (root / VOC).unlink()
    # the value set in the SVS form the ANS repository has it (jeuxDeValeurs/, not among the files ../shared keeps),
    # made from the derived copy's concepts
    svs = etree.Element("{urn:ihe:iti:svs:2008}RetrieveValueSetResponse", nsmap={None: "urn:ihe:iti:svs:2008"})
    vs = etree.SubElement(svs, "{urn:ihe:iti:svs:2008}ValueSet", id="1.2.250.1.213.1.1.5.471",
                          displayName="JDV_J07_XdsTypeCode_CISIS.tabs")
    concepts = etree.SubElement(vs, "{urn:ihe:iti:svs:2008}ConceptList")
    for c in etree.parse(str(SHARED / VOC)).xpath("/*/valueSet/conceptList/concept"):
        etree.SubElement(concepts, "{urn:ihe:iti:svs:2008}Concept", code=c.get("code"),
                         codeSystem=c.get("codeSystem"), displayName=c.get("displayName"))
    etree.ElementTree(svs).write(str(root / "jeuxDeValeurs" / "JDV_J07_XdsTypeCode_CISIS.xml"), encoding="UTF-8",
                                 xml_declaration=True)
    return root


def test_repair_rebuilds_both_files_as_the_tested_copy_has_them(ans_copy: Path):
    done = _run("--repair", str(ans_copy))
    assert done.returncode == 0, done.stderr
    assert "repaired: schematrons/include/entrees/E_directiveAnticipee_int.sch" in done.stdout
    assert f"repaired: {VOC}" in done.stdout
    assert f'schematron_dir = "{(ans_copy / "schematrons").resolve()}"' in done.stdout
    assert f'cda_schema = "{(ans_copy / "infrastructure/cda/CDA_extended.xsd").resolve()}"' in done.stdout
    upper, lower = ans_copy / ENTREES / "E_directiveAnticipee_int.sch", ans_copy / ENTREES / "E_directiveanticipee_int.sch"
    assert upper.read_bytes() == lower.read_bytes()
    # the value set the rules read: the same codes, systems and labels as the copy the test suite passes with
    def concepts(path: Path) -> list[tuple[str, ...]]:
        doc = etree.parse(str(path))
        return [(c.get("code"), c.get("codeSystem"), c.get("displayName"))
                for c in doc.xpath("/*/valueSet/conceptList/concept")]
    assert etree.parse(str(ans_copy / VOC)).xpath(CODES) == etree.parse(str(SHARED / VOC)).xpath(CODES)
    assert concepts(ans_copy / VOC) == concepts(SHARED / VOC) and len(concepts(SHARED / VOC)) > 50
    again = _run("--repair", str(ans_copy))           # a second run changes nothing
    assert again.returncode == 0 and "repaired" not in again.stdout


def test_repair_names_a_missing_source_file(ans_copy: Path):
    (ans_copy / "jeuxDeValeurs" / "JDV_J07_XdsTypeCode_CISIS.xml").unlink()
    done = _run("--repair", str(ans_copy))
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{ans_copy}/jeuxDeValeurs/JDV_J07_XdsTypeCode_CISIS.xml not found" in done.stderr


def test_repair_refuses_a_folder_that_is_not_the_ans_rules(tmp_path: Path):
    done = _run("--repair", str(tmp_path))
    assert done.returncode == 2
    assert f"{tmp_path}/schematrons/profils not found" in done.stderr
    usage = _run()
    assert usage.returncode == 2 and "scripts/ans-rules DIR" in usage.stdout
