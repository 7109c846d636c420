"""The ANS schematrons in the running hub: a conformant CR-BIO is relayed and its audit step says so; a
non-conformant one is held (transform.on_nonconformant = hold) with the failed rule ids and locations in the audit
trail and no patient value; a lab file with a NUL byte is held with its reason, never sent to `dead` (issue #11
item 5). The sender profile of the establishment's account supplies the lab's constants."""

from __future__ import annotations

import email
import json
from pathlib import Path

from hub.audit.store import timeline
from tests.integration.test_pipeline import client, rules_dir
from tests.support import SHARED, wait_for

CORPUS = Path(__file__).resolve().parents[1] / "unit" / "transform" / "corpus"   # the unit tests' corpus
TO = "dr.martin@medecin.mssante.fr"


def _lab_mail(hpr: bytes) -> bytes:
    msg = email.message.EmailMessage()
    msg["From"] = "sil@labo-ville.example"
    msg["To"] = TO
    msg["Subject"] = "Resultats"
    msg.set_content("Résultats ci-joints")
    msg.add_attachment(hpr, maintype="application", subtype="octet-stream", filename="RESULT.HPR")
    return msg.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n")


async def test_conformance_decides_and_the_audit_records_rules_not_patients(start_hub, peer, conn, pki, tmp_path):
    await conn.execute("UPDATE account SET allow_from = allow_from || '{labo-ville.example}' WHERE name = 'ch-test'")
    senders = tmp_path / "senders.toml"
    senders.write_text('[ch-test]\norg_finess = "690000001"\norg_name = "Laboratoire Ville"\n'
                       'org_addr = ["1 rue du Labo", "69003 LYON"]\nins_oid = "1.2.250.1.213.1.4.10"\n')
    d = rules_dir(tmp_path, """
rules:
  - id: lab-hprim
    match: {content: [hprim_sante, hprim_net]}
    then: {transform: hprim_to_cda_xdm, on_invalid: hold}
""")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(d)}, transform={
        "cda_schema": str(SHARED / "schemas" / "cda" / "CDA_extended.xsd"),
        "schematron_dir": str(SHARED / "schematrons" / "ansforge" / "schematrons"), "senders": str(senders)})
    sent = {}
    for name, data in (("conformant", (CORPUS / "hs_alpha_hemato.hpr").read_bytes()),
                       ("no_biologist", (CORPUS / "hs_gamma_serologie.hpr").read_bytes()),
                       ("nul", (CORPUS / "hs_alpha_hemato.hpr").read_bytes().replace(b"OBX|2|", b"OBX|2|\x00", 1))):
        code, text = await client(hub, pki).send("sil@labo-ville.example", [TO], _lab_mail(data))
        assert code == 250, text
        sent[name] = text.rsplit(" ", 1)[1]

    await wait_for(lambda: peer.messages, timeout=30)
    for name in ("no_biologist", "nul"):
        await wait_for(lambda: conn.fetchval("SELECT state = 'held' FROM recipient WHERE message_id = $1",
                                             sent[name]), timeout=30)
    assert len(peer.messages) == 1
    out = email.message_from_bytes(peer.messages[0].content)
    assert out["X-MSS-INS"] == "O" and out["X-MSS-CODECDA"] == "11502-2"

    events = {e["event"]: e for e in await timeline(conn, sent["conformant"])}
    steps = {s["name"]: s for s in events["transformed"]["facts"]["steps"]}
    assert steps["cda_schematron"]["validation"] == "conformant (5 schematrons)"
    assert steps["report_to_pdf"]["output_sha256"]

    events = {e["event"]: e for e in await timeline(conn, sent["no_biologist"])}
    failed = events["transform_failed"]["facts"]
    assert failed["decision"] == "hold" and failed["steps"][-1]["name"] == "cda_schematron"
    assert "ASIP-STRUCT-MIN-StrucMin.sch:template-1.2.250.1.213.1.1.1.1-2017-12-13T103531 at /ClinicalDocument/" \
        in failed["steps"][-1]["validation"]
    recorded = json.dumps([e["facts"] for e in await timeline(conn, sent["no_biologist"])], ensure_ascii=False)
    for value in ("MARTIN-ESSAI", "SOPHIE", "19800315", "280037512345678", "Négatif", "Ferritine"):
        assert value not in recorded

    events = {e["event"]: e for e in await timeline(conn, sent["nul"])}
    assert "control character U+0000" in events["transform_failed"]["facts"]["reason"]
    assert await conn.fetchval("SELECT count(*) FROM message WHERE state = 'dead'") == 0
