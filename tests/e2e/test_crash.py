"""Crash safety of the whole `hub serve` (two processes, embedded PostgreSQL): SIGKILL while a load is being sent;
after restart every message that got a 250 is delivered. At-least-once: a recipient whose delivery was in flight
when the hub died may be delivered twice (the peer had answered 250 but the outcome was not yet recorded); never
more often than the number of deliveries that can be in flight at once."""

import email
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
import time

import pytest

from tests.support import Peer, free_port, trust_list_xml, wait_for
from tests.e2e.serve_support import terminate

PASSWORD = "correct horse battery staple"
PEER_DN = "CN=smtp.operator.example,O=OPERATEUR TEST"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def hub_cmd(config, *args):
    return [sys.executable, "-m", "hub", "--config", str(config), *args]


def write_config(tmp_path, pki, peer_port, smtp_port, http_port):
    cfg = tmp_path / "hub.toml"
    cfg.write_text(f"""
[hub]
data_dir = "{tmp_path / 'var'}"
domains = ["hub.example.org"]
processes = 2
[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "hub.example.org"
tls_cert = "{pki['hub_server'][0]}"
tls_key = "{pki['hub_server'][1]}"
[http]
listen = "127.0.0.1:{http_port}"
[delivery]
client_cert = "{pki['hub_client'][0]}"
client_key = "{pki['hub_client'][1]}"
ca_file = "{pki['ca_file']}"
poll_interval = 0.2
lease_seconds = 5
[delivery.transport]
"medecin.mssante.fr" = "127.0.0.1:{peer_port}"
[queue]
first_retry = 1
max_retry_interval = 2
""")
    return cfg


def start(cfg, log):
    proc = subprocess.Popen(hub_cmd(cfg, "serve"), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    return proc


def wait_port(port, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"hub exited with {proc.returncode}")
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=2) as s:
                s.noop()
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("hub did not open its SMTP port")


@pytest.mark.slow
async def test_sigkill_under_load_loses_nothing(tmp_path, pki):
    peer = Peer(pki)
    peer.start()
    smtp_port, http_port = free_port(), free_port()
    cfg = write_config(tmp_path, pki, peer.port_, smtp_port, http_port)
    env = dict(os.environ)
    subprocess.run(hub_cmd(cfg, "accounts", "add", "ch-test", "--password-stdin", "--allow-from", "ch-test.example"),
                   input=PASSWORD + "\n", text=True, check=True, cwd=ROOT, env=env, capture_output=True)
    liste = tmp_path / "liste.xml"
    liste.write_bytes(trust_list_xml([("medecin.mssante.fr", PEER_DN)]))
    subprocess.run(hub_cmd(cfg, "trust", "import", str(liste), "--force"), check=True, cwd=ROOT, capture_output=True)
    log = open(tmp_path / "hub.log", "wb")
    proc = start(cfg, log)
    accepted: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def sender(n: int):
        ctx = ssl.create_default_context(cafile=str(pki["ca_file"]))
        i = 0
        while not stop.is_set() and i < 400:
            try:
                with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
                    s.starttls(context=ctx)
                    s.login("ch-test", PASSWORD)
                    while not stop.is_set() and i < 400:
                        mid = f"<crash-{n}-{i}@test>"
                        body = (f"From: dpi@ch-test.example\r\nTo: dr@medecin.mssante.fr\r\nSubject: crash {n} {i}\r\n"
                                f"Message-ID: {mid}\r\n\r\n" + "ligne de compte rendu\r\n" * 200).encode()
                        i += 1
                        s.sendmail("dpi@ch-test.example", ["dr@medecin.mssante.fr"], body)
                        with lock:
                            accepted.append(mid)
            except (OSError, smtplib.SMTPException):
                time.sleep(0.1)          # the hub is down: try again until told to stop

    try:
        wait_port(smtp_port, proc)
        threads = [threading.Thread(target=sender, args=(n,), daemon=True) for n in range(4)]
        for t in threads:
            t.start()
        await wait_for(lambda: len(accepted) >= 150, timeout=60)
        proc.send_signal(signal.SIGKILL)                     # the supervisor; workers die with it (PDEATHSIG)
        proc.wait(10)
        killed_at = len(accepted)
        time.sleep(1.0)
        proc = start(cfg, log)                               # restart on the same data directory
        wait_port(smtp_port, proc)
        await wait_for(lambda: len(accepted) >= killed_at + 100, timeout=60)
        stop.set()
        for t in threads:
            t.join(30)
        wanted = set(accepted)

        def delivered_ids():
            return [email.message_from_bytes(m.content)["Message-ID"] for m in list(peer.messages)]

        await wait_for(lambda: wanted <= set(delivered_ids()), timeout=120)
        ids = delivered_ids()
        duplicates = len(ids) - len(set(ids))
        print(f"accepted {len(wanted)}, delivered {len(set(ids))} distinct, {duplicates} duplicate deliveries")
        # at most what can be in flight at once: 2 processes x delivery.workers
        assert duplicates <= 2 * 50
    finally:
        stop.set()
        terminate(proc, 60)
        log.close()
        peer.stop()
        from hub.db import Embedded

        Embedded(tmp_path / "var").stop("immediate")
