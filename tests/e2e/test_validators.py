"""The ANS schematron validators of a real `hub serve` (two worker processes, embedded PostgreSQL): started once by
the supervisor and shared by both workers (memory paid once per node), their generated validators cached in the
data directory, a killed validator started again while the hub keeps checking lab reports."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import asyncpg
import pytest

from hub.db import Embedded
from tests.e2e.serve_support import (PASSWORD, PEER_DN, ROOT, clean_env, hub_cmd, json_lines, run_hub, shared_tmp,
                                     smtp_session, terminate, wait_http, write_config)
from tests.support import Peer, free_port, trust_list_xml

SHARED = ROOT.parent / "shared"
SCHEMATRONS = SHARED / "schematrons" / "ansforge" / "schematrons"
ORU = (ROOT / "tests" / "unit" / "transform" / "corpus" / "oru_epsilon.hl7").read_bytes()
pytestmark = pytest.mark.skipif(not SCHEMATRONS.is_dir(), reason="the ANS schematrons are not in ../shared")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with open(task / "children") as fh:
            out += [int(c) for c in fh.read().split()]
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _validators(pid: int) -> list[int]:
    return [c for c in _children(pid) if "hub.transform.validate.worker" in _cmdline(c)]


class Hub:
    def __init__(self, base: Path, pki):
        self.pki = pki
        self.peer = Peer(pki)
        self.peer.start()
        self.smtp, self.http = free_port(), free_port()
        self.data = base / "var"
        self.log_path = base / "hub.log"
        extra = (f'[transform]\ncda_schema = "{SHARED / "schemas" / "cda" / "CDA_extended.xsd"}"\n'
                 f'schematron_dir = "{SCHEMATRONS}"\n')
        self.config = write_config(base / "hub.toml", pki, data_dir=self.data, smtp_port=self.smtp,
                                   http_port=self.http, transport={"medecin.mssante.fr": self.peer.port_},
                                   extra=extra)
        done = run_hub(self.config, "accounts", "add", "labo-bioxa", "--password-stdin", "--allow-from",
                       "labo-bioxa.example", input=PASSWORD + "\n")         # before: seen at once
        assert done.returncode == 0, done.stderr
        trust = base / "liste.xml"
        trust.write_bytes(trust_list_xml([("medecin.mssante.fr", PEER_DN)]))
        done = run_hub(self.config, "trust", "import", str(trust), "--force")
        assert done.returncode == 0, done.stderr
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(hub_cmd(self.config, "serve"), cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=clean_env())
        wait_http(f"http://127.0.0.1:{self.http}/healthz", self.proc, timeout=180)

    def records(self) -> list[dict]:
        self.log.flush()
        return json_lines(self.log_path.read_text())

    def send_oru(self) -> str:
        head = ("From: <sil@labo-bioxa.example>\r\nTo: <dr@medecin.mssante.fr>\r\nSubject: resultats\r\n"
                f"Message-ID: <{time.time_ns()}@labo>\r\nMIME-Version: 1.0\r\n"
                'Content-Type: multipart/mixed; boundary="B"\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\n'
                'Bonjour\r\n--B\r\nContent-Type: application/hl7-v2; name="r.hl7"\r\n'
                "Content-Transfer-Encoding: base64\r\n\r\n").encode()
        import base64

        body = head + base64.encodebytes(ORU).replace(b"\n", b"\r\n") + b"--B--\r\n"
        with smtp_session(self.smtp, self.pki["ca_file"], user="labo-bioxa") as s:
            s.mail("sil@labo-bioxa.example")
            assert s.rcpt("dr@medecin.mssante.fr")[0] == 250
            code, text = s.data(body)
            assert code == 250, text
            return text.decode().rsplit(" ", 1)[1]

    def schematron_step(self, message_id: str, timeout: float = 60) -> str:
        async def fetch():
            conn = await asyncpg.connect(Embedded(self.data).url("postgres"))
            try:
                return await conn.fetch("SELECT event, facts FROM audit_event WHERE message_id = $1", message_id)
            finally:
                await conn.close()

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for row in asyncio.run(fetch()):
                if row["event"] in ("transformed", "transform_failed"):
                    steps = json.loads(row["facts"]).get("steps") or []
                    return next((s["validation"] for s in steps if s["name"] == "cda_schematron"), row["event"])
            time.sleep(0.3)
        raise AssertionError("the message was not processed")

    def stop(self) -> None:
        terminate(self.proc)
        self.log.close()
        self.peer.stop()


@pytest.fixture(scope="module")
def hub(pki):
    with shared_tmp("hub-validators-") as base:
        h = Hub(base, pki)
        try:
            yield h
        finally:
            h.stop()
            Embedded(h.data).stop("immediate")


def test_one_set_of_validators_serves_every_worker_process(hub):
    validators = _validators(hub.proc.pid)
    assert len(validators) == 2                                 # structuration minimale + the other sets, once
    workers = [c for c in _children(hub.proc.pid) if " serve" in _cmdline(c) or c not in validators]
    assert workers and all(not _validators(w) for w in workers)  # no worker starts validators of its own
    ready = [r for r in hub.records() if r.get("event") == "schematron_validator_ready"]
    assert len(ready) == 2 and all(r["rss_mb"] > 0 for r in ready)
    cached = list((hub.data / "cache" / "schematron").glob("*.xsl"))
    assert len(cached) == 6                                     # every set's generated validator, for a restart
    assert hub.schematron_step(hub.send_oru()) == "conformant (5 schematrons)"


def test_a_killed_validator_is_started_again_and_checks_go_on(hub):
    first = _validators(hub.proc.pid)
    os.kill(first[0], signal.SIGKILL)
    message_id = hub.send_oru()                                 # waits in the socket's backlog meanwhile
    assert hub.schematron_step(message_id, timeout=120) == "conformant (5 schematrons)"
    events = [r.get("event") for r in hub.records()]
    assert "schematron_validator_died" in events and "schematron_validator_restarted" in events
    now = _validators(hub.proc.pid)
    assert len(now) == 2 and first[0] not in now
