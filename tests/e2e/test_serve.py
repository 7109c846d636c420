"""One real `hub serve` (two worker processes, embedded PostgreSQL) shared by the tests of this module, in order:
one instance per port and per data directory, one-off commands next to it, the queue toolbox on real queued mail
(CLI and /api/queue), logs, health and metrics, a closed pipe, backup and restore, then the supervisor's repairs
(a worker killed, the postmaster killed) and the graceful stop. Sharing it is honest: each test states what it
needs from the queue and creates it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from hub.db import Embedded
from tests.e2e.serve_support import (PASSWORD, PEER_DN, ROOT, clean_env, hub_cmd, http_get, json_lines, listeners,
                                     run_hub, send, shared_tmp, smtp_session, terminate, wait_http, write_config)
from tests.support import Peer, free_port, trust_list_xml

SENDER = "dpi@ch-test.example"


class Served:
    def __init__(self, base: Path, pki):
        self.base, self.pki = base, pki
        self.peer = Peer(pki)
        self.peer.start()
        self.smtp, self.http = free_port(), free_port()
        self.data = base / "var"
        self.log_path = base / "hub.log"
        senders = base / "senders.toml"        # a profile for ch-test (created below) and one with a typo
        senders.write_text('[ch-test]\nchapter = "18719-5"\n\n[ch-tset]\norg_name = "Laboratoire Ville"\n')
        self.config = write_config(base / "hub.toml", pki, data_dir=self.data, smtp_port=self.smtp,
                                   http_port=self.http, transport={"medecin.mssante.fr": self.peer.port_,
                                                                   "down.mssante.fr": free_port()},
                                   extra=f'[transform]\nsenders = "{senders}"')
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(hub_cmd(self.config, "serve"), cwd=ROOT, stdout=self.log,
                                     stderr=subprocess.STDOUT, env=clean_env())
        self.url = f"http://127.0.0.1:{self.http}"
        wait_http(self.url + "/healthz", self.proc)
        for args, stdin in ((("accounts", "add", "ch-test", "--password-stdin", "--allow-from", "ch-test.example"),
                             PASSWORD + "\n"), (("trust", "import", str(self._trust_list()), "--force"), None)):
            done = run_hub(self.config, *args, input=stdin)
            assert done.returncode == 0, done.stderr
        done = run_hub(self.config, "tokens", "add", "ops", "--role", "operator")
        self.token = done.stdout.strip()
        assert done.returncode == 0 and self.token
        self._wait_trusted()

    def _trust_list(self) -> Path:
        xml = self.base / "liste.xml"
        xml.write_bytes(trust_list_xml([("medecin.mssante.fr", PEER_DN), ("down.mssante.fr", PEER_DN)]))
        return xml

    def _wait_trusted(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if json.loads(http_get(self.url + "/healthz")[1]).get("trust_domains") == 2:
                return
            time.sleep(0.2)
        raise AssertionError("the trust list was not picked up")

    def hub(self, *args, **kwargs):
        return run_hub(self.config, *args, **kwargs)

    def send(self, rcpts, subject="test", **kwargs) -> str:
        return send(self.smtp, self.pki["ca_file"], rcpts, subject, **kwargs)

    def log_records(self) -> list[dict]:
        if not self.log.closed:
            self.log.flush()
        return json_lines(self.log_path.read_text())

    def sql(self, query: str, *args):
        async def run():
            conn = await asyncpg.connect(Embedded(self.data).url("postgres"))
            try:
                return await conn.fetch(query, *args)
            finally:
                await conn.close()
        return asyncio.run(run())

    def api(self, path: str, method: str = "GET", body=None, token: str | None = "default"):
        code, data = http_get(self.url + path, self.token if token == "default" else token, method, body)
        try:
            return code, json.loads(data)
        except ValueError:
            return code, data

    def postmaster_pid(self) -> int:
        return int((self.data / "pg" / "postmaster.pid").read_text().split()[0])

    def stop(self) -> int:
        if self.log.closed:
            return self.proc.returncode
        terminate(self.proc)
        self.log.close()
        self.peer.stop()
        return self.proc.returncode


@pytest.fixture(scope="module")
def served(pki):
    with shared_tmp("hub-served-") as base:
        s = Served(base, pki)
        try:
            yield s
        finally:
            s.stop()
            Embedded(s.data).stop("immediate")


# ---- one hub per port and per data directory ------------------------------------------------------------------
def test_a_second_hub_cannot_join_the_port_nor_the_data_directory(served, tmp_path, pki):
    assert listeners(served.smtp) == 2                      # the two workers of the first hub
    other = write_config(tmp_path / "other.toml", pki, data_dir=tmp_path / "var", smtp_port=served.smtp,
                         http_port=free_port(), transport={})
    proc = run_hub(other, "serve", timeout=60)
    assert proc.returncode == 2
    assert f"setting smtp.listen: 127.0.0.1:{served.smtp}: address already in use" in proc.stderr
    assert listeners(served.smtp) == 2                      # nobody joined
    same_dir = write_config(tmp_path / "same.toml", pki, data_dir=served.data, smtp_port=free_port(),
                            http_port=free_port(), transport={})
    proc = run_hub(same_dir, "serve", timeout=60)
    assert proc.returncode == 2
    assert f"{served.data} is in use by another `hub serve` (pid {served.proc.pid})" in proc.stderr
    assert served.proc.poll() is None


def test_one_off_commands_use_the_running_postgres(served):
    before = served.postmaster_pid()
    done = subprocess.run([sys.executable, "-m", "hub", "trust", "status", "--config", str(served.config)],
                          cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=60)   # --config after
    assert done.returncode == 0 and "v1" in done.stdout, done.stderr
    assert served.postmaster_pid() == before and Embedded(served.data).is_running()
    assert json.loads(http_get(served.url + "/healthz")[1])["database"] == "ok"


# ---- the queue toolbox, on real mail -------------------------------------------------------------------------
def test_queue_list_summary_show_on_real_mail(served):
    delivered = served.send(["a@medecin.mssante.fr"], "delivered")
    deferred = served.send(["b@down.mssante.fr", "c@down.mssante.fr"], "deferred")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rows = served.sql("SELECT state, attempts FROM recipient WHERE message_id = $1", deferred)
        if all(r["attempts"] > 0 for r in rows) and served.peer.handler_obj.for_rcpt("a@medecin.mssante.fr"):
            break
        time.sleep(0.2)
    done = served.hub("queue", "list")
    assert done.returncode == 0
    assert deferred in done.stdout and delivered not in done.stdout
    assert "deferred" in done.stdout and "down.mssante.fr" in done.stdout
    assert "-- 1 message(s)" in done.stdout and "2 deferred" in done.stdout
    done = served.hub("queue", "list", "--state", "held")
    assert done.stdout.strip() == "no message matches"
    shape = json.loads(served.hub("queue", "summary", "--json").stdout)
    assert shape["total"][0] == 2 and shape["domains"]["down.mssante.fr"][:2] == [2, 2]   # both younger than 5 min
    text = served.hub("queue", "summary").stdout
    assert "TOTAL" in text and "down.mssante.fr" in text and "1280+" in text
    done = served.hub("queue", "show", deferred)
    assert done.returncode == 0
    assert "why:  deferred after 1 attempt(s)" in done.stdout
    assert "next: next attempt in" in done.stdout and "bounces" in done.stdout
    shown = json.loads(served.hub("queue", "show", delivered, "--json").stdout)
    assert shown["recipients"][0]["state"] == "delivered" and shown["recipients"][0]["why"].startswith("delivered")
    done = served.hub("queue", "show", "no-such-message")
    assert done.returncode == 2 and "no message 'no-such-message'" in done.stderr and "Traceback" not in done.stderr
    served.deferred = deferred


def test_hold_release_flush_requeue_delete_view(served):
    mid = served.deferred
    done = served.hub("queue", "hold", mid, "--reason", "ticket 42")
    assert done.returncode == 0 and "2 recipient(s) held" in done.stdout
    show = served.hub("queue", "show", mid).stdout
    assert "why:  held by operator cli:" in show and "ticket 42" in show and "hub queue release" in show
    assert served.hub("queue", "hold", mid).returncode == 2               # nothing waiting any more
    assert served.hub("queue", "release", mid).returncode == 0
    assert served.hub("queue", "release", mid).returncode == 2
    done = served.hub("queue", "flush", "--domain", "down.mssante.fr")
    assert done.returncode == 0 and "due now for down.mssante.fr" in done.stdout
    # a dead recipient (the worker crashed on it again and again): requeue sends it through delivery again
    dead = served.send(["d@down.mssante.fr"], "dead")
    _wait(lambda: served.sql("SELECT 1 FROM recipient WHERE message_id = $1 AND attempts > 0", dead), what="deferred")
    served.sql("UPDATE recipient SET state = 'dead', last_reply = 'recovered 9 times from crashed deliveries'"
               " WHERE message_id = $1", dead)
    served.sql("UPDATE message SET state = 'done', dead_stage = 'delivery' WHERE id = $1", dead)
    listed = served.hub("queue", "list", "--state", "dead").stdout
    assert dead in listed and "recovered 9 times" in listed
    assert "never retried automatically" in served.hub("queue", "show", dead).stdout
    assert served.hub("queue", "requeue", dead).returncode == 0
    assert served.hub("queue", "requeue", dead).returncode == 2               # no dead recipient any more
    _wait(lambda: served.sql("SELECT 1 FROM recipient WHERE message_id = $1 AND state = 'queued' AND attempts = 1",
                             dead), what="tried again")
    served.hub("queue", "delete", dead, "--reason", "test cleanup")
    # view: the content, and the access is audited
    done = served.hub("queue", "view", mid, "--headers")
    assert done.returncode == 0 and "Subject: deferred" in done.stdout and "Bonjour" not in done.stdout
    # delete: no delivery, body purged, audited, the chain still verifies
    assert served.hub("queue", "delete", mid).returncode == 2              # --reason is required
    done = served.hub("queue", "delete", mid, "--reason", "misaddressed, ticket 43")
    assert done.returncode == 0 and "body purged" in done.stdout
    row = served.sql("SELECT state, body IS NULL AS purged FROM message WHERE id = $1", mid)[0]
    assert row["state"] == "deleted" and row["purged"]
    assert {r["state"] for r in served.sql("SELECT state FROM recipient WHERE message_id = $1", mid)} == {"deleted"}
    done = served.hub("queue", "view", mid)
    assert done.returncode == 2 and "purged" in done.stderr
    timeline = served.hub("audit", "timeline", mid).stdout
    for event in ("held", "released", "viewed", "deleted"):
        assert f" {event} " in timeline, event
    assert "misaddressed, ticket 43" in timeline and "body_sha256" in timeline
    verify = served.hub("audit", "verify")
    assert verify.returncode == 0 and "OK" in verify.stdout
    assert served.hub("queue", "list").stdout.strip() == "queue is empty"


def test_queue_api_for_operator_tokens(served):
    mid = served.send(["e@down.mssante.fr"], "api")
    code, body = served.api("/api/queue", token=None)
    assert code == 401 and "error" in body
    code, body = served.api("/api/queue")
    assert code == 200 and mid in [m["id"] for m in body["messages"]] and body["summary"]["messages"] >= 1
    code, body = served.api("/api/queue/summary?state=all")
    assert code == 200 and body["domains"]["down.mssante.fr"][0] >= 1
    code, body = served.api(f"/api/queue/{mid}")
    assert code == 200 and body["recipients"][0]["address"] == "e@down.mssante.fr" and body["recipients"][0]["why"]
    code, body = served.api("/api/queue/nope")
    assert code == 404 and "no message" in body["error"]
    code, body = served.api(f"/api/queue/{mid}/hold", "POST", {"reason": "api test"})
    assert code == 200 and body["recipients"] == 1
    code, body = served.api(f"/api/queue/{mid}/hold", "POST", {})
    assert code == 409 and "error" in body
    code, body = served.api(f"/api/queue/{mid}/release", "POST")
    assert code == 200
    code, body = served.api(f"/api/queue/{mid}/explode", "POST")
    assert code == 404 and "error" in body
    code, body = served.api("/api/queue/flush", "POST", {"domain": "down.mssante.fr"})
    assert code == 200 and body["action"] == "flush"
    code, body = served.api(f"/api/queue/{mid}/content")
    assert code == 200 and b"Subject: api" in body
    code, body = served.api(f"/api/queue/{mid}/delete", "POST", {})
    assert code == 400 and "reason" in body["error"]
    code, body = served.api(f"/api/queue/{mid}/delete", "POST", {"reason": "api cleanup"})
    assert code == 200
    code, body = served.api("/api/queue?limit=abc")
    assert code == 400 and "limit" in body["error"]
    timeline = served.hub("audit", "timeline", mid, "--format", "json").stdout
    assert '"token:ops"' in timeline and '"viewed"' in timeline and '"deleted"' in timeline


# ---- logs, health, metrics ---------------------------------------------------------------------------------------
def test_logs_are_json_with_every_refusal(served):
    pki = served.pki
    with smtp_session(served.smtp, pki["ca_file"], user=None) as s:
        try:
            s.login("ch-test", "wrong password, wrong")
        except Exception:
            pass
    with smtp_session(served.smtp, pki["ca_file"]) as s:
        assert s.mail("someone@elsewhere.example")[0] == 550                 # sender not allowed
        s.rset()
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt("x@gmail.com")[0] == 550                               # relay denied
        assert s.rcpt("a@medecin.mssante.fr")[0] == 250
        code, _ = s.data(b"Subject: big\r\n\r\n" + b"x" * 250_000 + b"\r\n")   # smtp.max_message_size = 200000
        assert code == 552
    time.sleep(0.5)
    text = served.log_path.read_text()
    for line in text.splitlines():
        if line.strip():
            json.loads(line)                                                 # only JSON lines on the output
    assert "login_data" not in text
    records = served.log_records()
    by_event = {}
    for r in records:
        by_event.setdefault(r["event"], []).append(r)
    failed = by_event["auth_failed"][-1]
    assert failed["account"] == "ch-test" and failed["peer"] == "127.0.0.1" and failed["reply"].startswith("535")
    sender = by_event["sender_refused"][-1]
    assert sender["account"] == "ch-test" and sender["peer"] == "127.0.0.1" and sender["reply"].startswith("550 5.7.1")
    rcpt = [r for r in by_event["recipient_refused"] if r.get("recipient_domain") == "gmail.com"][-1]
    assert rcpt["account"] == "ch-test" and rcpt["reply"].startswith("550 5.7.1") and rcpt["level"] == "warning"
    size = by_event["message_refused"][-1]
    assert size["account"] == "ch-test" and size["reply"].startswith("552")
    assert all(r["level"] == "warning" for r in by_event["delivery_temporary"])   # a deferral is a warning
    assert "x@gmail.com" not in text                                         # local parts are never logged


def test_health_and_metrics(served):
    health = json.loads(http_get(served.url + "/healthz")[1])
    assert health["status"] == "ok" and health["embedded_postgresql"]["state"] == "running"
    metrics = http_get(served.url + "/metrics")[1].decode()
    names = {line.split("{")[0].split(" ")[0] for line in metrics.splitlines() if line and not line.startswith("#")}
    for name in ("hub_certificate_expiry_timestamp_seconds", "hub_trust_list_imported_timestamp_seconds",
                 "hub_directory_imported_timestamp_seconds", "hub_audit_unsealed_events", "hub_audit_seal_lag_seconds",
                 "hub_build_info", "hub_database_up", "hub_delivery_domain_outcomes_total"):
        assert name in names, name
    assert 'hub_certificate_expiry_timestamp_seconds{setting="delivery.client_cert"}' in metrics
    assert 'hub_delivery_domain_outcomes_total{domain="medecin.mssante.fr",outcome="delivered"}' in metrics
    assert 'hub_queue_recipients{state="dead"}' in metrics and 'hub_queue_recipients{state="deferred"}' in metrics
    served.metric_names = names


def test_cda_chains_without_the_ans_rules_are_said_loudly(served):
    """This hub runs the shipped rules (they produce CR-BIO and N1 documents) with no transform.schematron_dir:
    it works, and says so at start-up, on /healthz and in the metric the HubCdaConformanceUnchecked alert uses."""
    [line] = [r for r in served.log_records() if r.get("event") == "conformance_not_checked"]
    assert line["level"] == "warning" and line["setting"] == "transform.schematron_dir"
    assert {"hprim_to_cda_xdm", "pdf_to_cda_n1_xdm"} <= set(line["chains"])
    health = json.loads(http_get(served.url + "/healthz")[1])
    assert health["status"] == "ok"
    assert any(w.startswith("transform.schematron_dir is empty: the CDAs of chains ") for w in health["warnings"])
    assert "hub_transform_conformance_unchecked 1.0" in http_get(served.url + "/metrics")[1].decode()


def test_sender_profile_naming_no_account_is_said(served):
    """A sender profile whose name is no account applies to nothing: said at start-up, and on /healthz until an
    account of that name exists (ch-test was created after the start: its profile is then no longer named)."""
    lines = [r for r in served.log_records() if r.get("event") == "sender_profile_without_account"]
    assert lines[0]["level"] == "warning" and lines[0]["profiles"] == ["ch-test", "ch-tset"]
    assert lines[0]["setting"] == "transform.senders" and lines[0]["file"].endswith("senders.toml")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        warnings = json.loads(http_get(served.url + "/healthz")[1]).get("warnings", [])
        named = [w for w in warnings if w.startswith("transform.senders: no account named")]
        if named and "ch-test," not in named[0]:
            break
        time.sleep(0.5)
    assert named == ["transform.senders: no account named ch-tset (names are case-sensitive; hub accounts list): "
                     "those profiles apply to no message"]


def test_dashboard_queries_use_live_metric_names(served):
    from tests.unit.test_deploy import dashboard_metric_names

    names = dashboard_metric_names()
    assert len(names) >= 15
    assert not names - served.metric_names, names - served.metric_names


def test_closed_pipe_is_quiet(served):
    for i in range(3):
        served.send([f"p{i}@down.mssante.fr"], f"pipe {i}")
    cmd = " ".join(hub_cmd(served.config, "queue", "list")) + " | head -1"
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=ROOT, env=clean_env(),
                          timeout=60)
    assert proc.stdout.startswith("ID") and proc.stderr == ""


# ---- backup and restore ------------------------------------------------------------------------------------------
@pytest.fixture
def scratch():
    with shared_tmp("hub-restore-") as d:
        yield d
        Embedded(d / "fresh").stop("immediate")


def test_backup_then_restore_embedded_and_external(served, scratch, pki, pg_cluster):
    tmp_path = scratch
    dump = tmp_path / "hub.dump"
    done = served.hub("db", "backup", str(dump))
    assert done.returncode == 0, done.stderr
    assert dump.stat().st_mode & 0o077 == 0
    assert served.hub("db", "backup", str(dump)).returncode == 2              # never overwrites
    missing = served.hub("db", "backup", str(tmp_path / "no-such-dir" / "hub.dump"))     # one clear line, exit 2
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert missing.stderr.strip() == f"hub: error: {tmp_path / 'no-such-dir' / 'hub.dump'}: No such file or directory"
    assert served.hub("db", "restore", str(dump)).returncode == 2             # not into the running hub
    expected = served.hub("queue", "list", "--json")
    expected_ids = sorted(m["id"] for m in json.loads(expected.stdout)["messages"])
    # embedded: a new data directory
    fresh = write_config(tmp_path / "fresh.toml", pki, data_dir=tmp_path / "fresh", smtp_port=free_port(),
                         http_port=free_port(), transport={})
    done = run_hub(fresh, "db", "restore", str(dump))
    assert done.returncode == 0, done.stderr
    assert "restored" in done.stdout
    verify = run_hub(fresh, "audit", "verify")
    assert verify.returncode == 0 and "OK: no altered" in verify.stdout, verify.stdout
    listed = json.loads(run_hub(fresh, "queue", "list", "--json").stdout)["messages"]
    assert sorted(m["id"] for m in listed) == expected_ids
    _wait(lambda: not Embedded(tmp_path / "fresh").is_running(), timeout=30,
          what="the embedded server stopped by the command that started it")
    # external: a new database on a PostgreSQL server
    name = f"restore_{os.getpid()}"

    async def create():
        conn = await asyncpg.connect(pg_cluster.admin_url)
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()
    asyncio.run(create())
    env = clean_env(HUB_DATABASE_URL=pg_cluster.runtime(name), HUB_DATABASE_ADMIN_URL=pg_cluster.admin(name))
    done = run_hub(fresh, "db", "restore", str(dump), env=env)
    assert done.returncode == 0, done.stderr
    verify = run_hub(fresh, "audit", "verify", env=env)
    assert verify.returncode == 0 and "OK: no altered" in verify.stdout
    assert sorted(m["id"] for m in json.loads(run_hub(fresh, "queue", "list", "--json", env=env).stdout)[
        "messages"]) == expected_ids


# ---- the supervisor's repairs ---------------------------------------------------------------------------------
def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def _wait(predicate, timeout=60, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"{what} not reached within the bound")


def test_a_killed_worker_is_restarted(served):
    workers = [p for p in _children(served.proc.pid) if "hub" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    _wait(lambda: any(r["event"] == "process_died" for r in served.log_records()), what="process_died")
    _wait(lambda: len([p for p in _children(served.proc.pid) if p not in workers and "hub" in
                       Path(f"/proc/{p}/cmdline").read_text()]) == 1, what="a new worker")
    _wait(lambda: listeners(served.smtp) == 2, what="two listeners")
    died = [r for r in served.log_records() if r["event"] == "process_died"][-1]
    assert died["code"] == -signal.SIGKILL and died["restart_in"] >= 1
    assert served.send(["after-kill@medecin.mssante.fr"], "after kill")


def test_a_killed_postmaster_is_restarted(served):
    os.kill(served.postmaster_pid(), signal.SIGKILL)
    _wait(lambda: any(r["event"] == "database_died" for r in served.log_records()), what="database_died")
    code, body = http_get(served.url + "/healthz")
    assert code == 503
    _wait(lambda: any(r["event"] == "database_restarted" for r in served.log_records()), timeout=90,
          what="database_restarted")
    health = wait_http(served.url + "/healthz", served.proc, timeout=60)
    assert health["embedded_postgresql"]["state"] == "running" and health["embedded_postgresql"]["restarts"] >= 1
    assert any(r["event"] == "postgresql_log" for r in served.log_records())   # its own lines, as JSON
    mid = _wait(lambda: _try_send(served), what="intake after the restart")
    assert mid


def _try_send(served):
    try:
        return served.send(["after-pg@medecin.mssante.fr"], "after postmaster")
    except Exception:
        return None


def test_sigterm_stops_everything_with_exit_0(served):
    assert served.stop() == 0
    assert not Embedded(served.data).is_running()
    assert any(r["event"] == "supervisor_stopping" for r in served.log_records())
