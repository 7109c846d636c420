"""The whole path through the running hub: directory resolution, routing rules, transformations, held and
rejected recipients, reload under load. SMTP in with smtplib, trust-space peer out over mutual TLS."""

import asyncio
import os
import email
import io
import zipfile
from pathlib import Path

from lxml import etree

from hub.audit.store import timeline
from hub.directory.formats import MSSANTE_HEADER
from hub.directory.importer import import_file
from hub.directory.synth import mssante_line
from tests.integration.conftest import PASSWORD
from tests.support import SHARED, Client, message, wait_for

SENDER = "dpi@ch-test.example"
RPPS = "10102727017"


def client(hub, pki):
    return Client(hub.smtp_port, pki["ca_file"], user="ch-test", password=PASSWORD)


async def import_directory(conn, tmp_path):
    rows = [
        mssante_line(type="PER", address="dr.martin@medecin.mssante.fr", pp_id_type="8", pp_id=RPPS,
                     national_id="8" + RPPS, last_name="MARTIN", first_name="Élise", profession_code="10",
                     dematerialisation="true"),
        mssante_line(type="ORG", address="secretariat@medecin.mssante.fr", pp_id_type="8", pp_id=RPPS,
                     national_id="8" + RPPS, structure_id_type="1", structure_id="1750000001",
                     structure_name="Cabinet Martin", dematerialisation="true"),
        mssante_line(type="ORG", address="accueil@labo.mssante.fr", structure_id_type="1",
                     structure_id="1750000002", structure_name="Laboratoire Bioxa", dematerialisation="true"),
    ]
    path = tmp_path / "Extraction_Correspondance_MSSante_202611220200.txt"
    path.write_text("|".join(MSSANTE_HEADER) + "\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return await import_file(conn, path, force=True)


async def cli(hub, *args) -> int:
    """Run a `hub` subcommand against the hub's database, as an operator would."""
    import subprocess
    import sys

    env = dict(os.environ, HUB_DATABASE_URL=hub.runtime_url)
    proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "hub", *args], env=env,
                                   capture_output=True, text=True, timeout=60)
    return proc.returncode


def rules_dir(tmp_path, text: str) -> Path:
    d = tmp_path / "rules"
    d.mkdir(exist_ok=True)
    (d / "10-test.yaml").write_text(text)
    (d / "99-catch-all.yaml").write_text("rules:\n  - id: default\n    then:\n      fallback: reject\n")
    return d


async def test_national_id_resolves_to_the_practitioner_mailbox(start_hub, peer, conn, pki, tmp_path):
    await import_directory(conn, tmp_path)
    hub = await start_hub({"medecin.mssante.fr": peer.port_})
    code, text = await client(hub, pki).send(SENDER, [f"8{RPPS}@rpps.hub.example.org"], message())
    assert code == 250, text
    await wait_for(lambda: peer.messages)
    assert peer.messages[0].rcpt_tos == ["dr.martin@medecin.mssante.fr"]      # PER before ORG
    mid = text.rsplit(" ", 1)[1]
    routed = [e for e in await timeline(conn, mid) if e["event"] == "routed"][0]
    assert routed["facts"]["resolution"]["method"] == "national_id"
    assert routed["facts"]["rule_id"] == "default"


async def test_unknown_recipients_are_refused_with_the_reason(start_hub, peer, conn, pki, tmp_path):
    await import_directory(conn, tmp_path)
    hub = await start_hub({"medecin.mssante.fr": peer.port_})

    def probe(s):
        s.mail(SENDER)
        return s.rcpt("99999999999@rpps.hub.example.org"), s.rcpt("x@medecin.mssante.fr")

    (c1, t1), (c2, t2) = await client(hub, pki).session(probe)
    assert c1 == 550 and t1.startswith(b"5.1.1") and b"99999999999" in t1
    assert c2 == 250          # unlisted address on an authorised domain: allowed, flagged


async def test_fallback_mailbox_for_unresolved_recipients(start_hub, peer, conn, pki, tmp_path):
    await import_directory(conn, tmp_path)
    await conn.execute("UPDATE account SET fallback_mailbox = 'secretariat@medecin.mssante.fr' WHERE name = 'ch-test'")
    d = rules_dir(tmp_path, "rules:\n  - id: unresolved-to-secretariat\n    match:\n      recipient_kind: unresolved\n"
                            "    then:\n      fallback: mailbox\n")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(d)})
    code, text = await client(hub, pki).send(SENDER, ["81234567890@rpps.hub.example.org"], message())
    assert code == 250, text
    await wait_for(lambda: peer.messages)
    assert peer.messages[0].rcpt_tos == ["secretariat@medecin.mssante.fr"]


async def test_rules_reject_hold_copy_redirect_and_headers(start_hub, peer, conn, pki, tmp_path):
    d = rules_dir(tmp_path, """
rules:
  - id: no-tests-to-labs
    match: {rcpt: "@labo.mssante.fr", mail_from: "test@ch-test.example"}
    then:
      reject: {code: 550, enhanced: 5.7.1, text: "Test messages may not go to laboratories"}
  - id: hold-night
    match: {header: {subject: {regex: "^URGENT HOLD"}}}
    then: {hold: "checked by the secretariat", headers: {add: {X-Hub-Checked: secretariat}}}
  - id: copy-and-tag
    match: {rcpt: "dr.copy@medecin.mssante.fr"}
    then:
      copy_to: [archive@medecin.mssante.fr]
      headers: {add: {X-Hub-Route: copied}, remove: [X-Internal]}
  - id: redirect-old
    match: {rcpt: "old@medecin.mssante.fr"}
    then: {redirect: "new@medecin.mssante.fr"}
""")
    hub = await start_hub({"medecin.mssante.fr": peer.port_, "labo.mssante.fr": peer.port_}, rules={"dir": str(d)})
    c = client(hub, pki)
    code, text = await c.send("test@ch-test.example", ["bio@labo.mssante.fr"], message())
    assert (code, text) == (550, "5.7.1 Test messages may not go to laboratories")
    held = (await c.send(SENDER, ["dr.a@medecin.mssante.fr"], message("URGENT HOLD please")))[1].rsplit(" ", 1)[1]
    body = message().replace(b"Subject:", b"X-Internal: secret\r\nSubject:")
    code, _ = await c.send(SENDER, ["dr.copy@medecin.mssante.fr", "old@medecin.mssante.fr"], body)
    assert code == 250
    await wait_for(lambda: len(peer.messages) >= 2)
    by_rcpt = {tuple(sorted(m.rcpt_tos)): m for m in peer.messages}
    copied = by_rcpt[("archive@medecin.mssante.fr", "dr.copy@medecin.mssante.fr")]
    assert b"X-Hub-Route: copied" in copied.content and b"X-Internal" not in copied.content
    assert ("new@medecin.mssante.fr",) in by_rcpt and b"X-Internal: secret" in by_rcpt[("new@medecin.mssante.fr",)].content
    assert await conn.fetchval("SELECT state FROM recipient WHERE message_id = $1", held) == "held"
    assert not any("dr.a@medecin.mssante.fr" in m.rcpt_tos for m in peer.messages)
    assert await cli(hub, "queue", "release", held) == 0
    await wait_for(lambda: any("dr.a@medecin.mssante.fr" in m.rcpt_tos for m in peer.messages))
    released = next(m for m in peer.messages if "dr.a@medecin.mssante.fr" in m.rcpt_tos)
    assert b"X-Hub-Checked: secretariat" in released.content      # the rule's other actions still apply
    release = next(e for e in await timeline(conn, held) if e["event"] == "released")
    assert release["actor"]                                       # who released it is in the audit trail


async def test_hprim_from_a_lab_arrives_as_valid_cda_in_xdm(start_hub, peer, conn, pki, tmp_path):
    await conn.execute("UPDATE account SET allow_from = allow_from || '{labo-ville.example}' WHERE name = 'ch-test'")
    d = rules_dir(tmp_path, """
rules:
  - id: lab-hprim
    match: {content: [hprim_sante, hprim_net]}
    then:
      transform: hprim_to_cda_xdm
      on_invalid: hold
""")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(d)})
    hpr = (SHARED / "samples" / "hprim" / "synthetic_hprim_sante_2.2_ORU.hpr").read_bytes()
    msg = email.message.EmailMessage()
    msg["From"] = "sil@labo-ville.example"
    msg["To"] = "dr.martin@medecin.mssante.fr"
    msg["Subject"] = "Resultats"
    msg["X-Hub-Patient-INS"] = "279035121518989"
    msg["X-Hub-Patient-INS-OID"] = "1.2.250.1.213.1.4.10"
    msg.set_content("Résultats ci-joints")
    msg.add_attachment(hpr, maintype="application", subtype="octet-stream", filename="RESULT.HPR")
    code, text = await client(hub, pki).send("sil@labo-ville.example", ["dr.martin@medecin.mssante.fr"],
                                             msg.as_bytes().replace(b"\n", b"\r\n").replace(b"\r\r\n", b"\r\n"))
    assert code == 250, text
    await wait_for(lambda: peer.messages, timeout=30)
    out = email.message_from_bytes(peer.messages[0].content)
    assert out["X-MSS-CODECDA"] and "11502-2" in out["X-MSS-CODECDA"]
    assert out["X-MSS-NIL"]
    assert out["Subject"].startswith("XDM/1.0/DDM+")
    zpart = next(p for p in out.walk() if (p.get_filename() or "").upper() == "IHE_XDM.ZIP")
    z = zipfile.ZipFile(io.BytesIO(zpart.get_payload(decode=True)))
    names = z.namelist()
    assert "IHE_XDM/SUBSET01/METADATA.XML" in names and "README.TXT" in names and "INDEX.HTM" in names
    cda_name = next(n for n in names if n.startswith("IHE_XDM/SUBSET01/") and n != "IHE_XDM/SUBSET01/METADATA.XML")
    schema = etree.XMLSchema(etree.parse(str(SHARED / "schemas" / "cda" / "CDA_extended.xsd")))
    doc = etree.fromstring(z.read(cda_name))
    assert schema.validate(doc), schema.error_log.last_error
    ns = {"h": "urn:hl7-org:v3"}
    assert doc.find("h:code", ns).get("code") == "11502-2"
    mid = text.rsplit(" ", 1)[1]
    events = await timeline(conn, mid)
    transformed = [e for e in events if e["event"] == "transformed"][0]
    assert transformed["facts"]["chain"] == "hprim_to_cda_xdm"
    assert all(len(s["output_sha256"]) == 64 for s in transformed["facts"]["steps"])
    assert transformed["patient_key"] is not None and b"279035121518989" not in transformed["patient_key"]


async def test_invalid_document_is_held_not_sent_half_right(start_hub, peer, conn, pki, tmp_path):
    d = rules_dir(tmp_path, """
rules:
  - id: lab-hprim
    match: {content: other}
    then: {transform: hprim_to_cda_xdm, on_invalid: hold}
""")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(d)})
    code, text = await client(hub, pki).send(SENDER, ["dr.martin@medecin.mssante.fr"], message())
    mid = text.rsplit(" ", 1)[1]
    await wait_for(lambda: conn.fetchval("SELECT state = 'held' FROM recipient WHERE message_id = $1", mid))
    events = {e["event"]: e for e in await timeline(conn, mid)}
    assert events["transform_failed"]["facts"]["decision"] == "hold"
    assert not peer.messages
    assert await cli(hub, "queue", "release", mid) == 0         # the operator looked: send the original
    await wait_for(lambda: peer.messages)
    assert b"Bonjour," in peer.messages[0].content and b"IHE_XDM" not in peer.messages[0].content
    assert await cli(hub, "queue", "release", mid) == 2         # nothing held any more: an error, exit 2


async def test_rules_reload_under_load_never_mixes_versions(start_hub, peer, conn, pki, tmp_path):
    d = rules_dir(tmp_path, "rules:\n  - id: tag-a\n    match: {rcpt: '@medecin.mssante.fr'}\n"
                            "    then: {headers: {set: {X-Hub-Version: a}}}\n")
    hub = await start_hub({"medecin.mssante.fr": peer.port_}, rules={"dir": str(d)})
    c = client(hub, pki)

    async def sender(n):
        for i in range(15):
            rcpts = [f"r{k}-{n}-{i}@medecin.mssante.fr" for k in range(3)]
            assert (await c.send(SENDER, rcpts, message(f"load {n} {i}")))[0] == 250

    async def flipper():
        for i in range(6):
            tag = "b" if i % 2 == 0 else "a"
            (d / "10-test.yaml").write_text(f"rules:\n  - id: tag-{tag}\n    match: {{rcpt: '@medecin.mssante.fr'}}\n"
                                            f"    then: {{headers: {{set: {{X-Hub-Version: {tag}}}}}}}\n")
            await hub.reload_rules("test")
            await asyncio.sleep(0.1)

    await asyncio.gather(sender(1), sender(2), flipper())
    rows = await conn.fetch("SELECT message_id, array_agg(DISTINCT rule_version) AS v, array_agg(DISTINCT facts->>'rule_id')"
                            " AS r FROM audit_event WHERE event = 'routed' GROUP BY message_id")
    assert len(rows) == 30
    assert all(len(r["v"]) == 1 and len(r["r"]) == 1 for r in rows)     # one version per message
    assert len({r["v"][0] for r in rows}) > 1                           # and the reloads did happen
