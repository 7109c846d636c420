"""Helpers for tests that run `hub serve` and other `hub` commands as real processes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import smtplib
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery staple"
PEER_DN = "CN=smtp.operator.example,O=OPERATEUR TEST"


def hub_cmd(config, *args) -> list[str]:
    return [sys.executable, "-m", "hub", *args, "--config", str(config)] if args and args[0] == "serve" \
        else [sys.executable, "-m", "hub", "--config", str(config), *args]


@contextlib.contextmanager
def as_user(user: str):
    """A command prefix running as `user` (runuser), with traversal (never reading) granted on the interpreter's
    parent directories for the duration (as the embedded PostgreSQL's set-up does for its binaries)."""
    import shutil
    import stat

    runuser = shutil.which("runuser")
    if runuser is None:
        import pytest

        pytest.skip("runuser (util-linux) is not installed")
    changed = []
    for parent in Path(sys.base_prefix).resolve().parents:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            parent.chmod(mode | 0o001)
            changed.append((parent, stat.S_IMODE(mode)))
    try:
        yield [runuser, "-u", user, "--"]
    finally:
        for parent, mode in reversed(changed):
            parent.chmod(mode)


@contextlib.contextmanager
def shared_tmp(prefix: str):
    """A directory for data that the embedded PostgreSQL's user (`hubpg`, when root) must reach: outside pytest's
    base directory, whose mode pytest resets to 0700 at the start of any other session on the machine."""
    import shutil
    import tempfile

    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HUB_") and k not in
           ("PROMETHEUS_MULTIPROC_DIR", "NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(extra)
    return env


def run_hub(config, *args, input: str | None = None, env: dict | None = None, timeout: float = 120,
            **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(hub_cmd(config, *args), input=input, text=True, capture_output=True, cwd=ROOT,
                          env=env or clean_env(), timeout=timeout, **kwargs)


def write_config(path: Path, pki, *, data_dir: Path, smtp_port: int, http_port: int, transport: dict[str, int],
                 processes: int = 2, extra: str = "") -> Path:
    lines = "\n".join(f'"{d}" = "127.0.0.1:{p}"' for d, p in transport.items())
    path.write_text(f"""
[hub]
data_dir = "{data_dir}"
domains = ["hub.example.org"]
processes = {processes}
[smtp]
listen = "127.0.0.1:{smtp_port}"
hostname = "hub.example.org"
tls_cert = "{pki['hub_server'][0]}"
tls_key = "{pki['hub_server'][1]}"
client_ca_file = "{pki['ca_file']}"
max_message_size = 200000
[http]
listen = "127.0.0.1:{http_port}"
[delivery]
client_cert = "{pki['hub_client'][0]}"
client_key = "{pki['hub_client'][1]}"
ca_file = "{pki['ca_file']}"
poll_interval = 0.2
lease_seconds = 5
[delivery.transport]
{lines}
[queue]
first_retry = 60
max_retry_interval = 120
[rules]
dir = "{ROOT / 'routing_rules'}"
watch = false
{extra}
""")
    return path


def http_get(url: str, token: str | None = None, method: str = "GET", body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if data is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def wait_http(url: str, proc: subprocess.Popen | None = None, timeout: float = 90, want: int = 200) -> dict:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"hub exited with {proc.returncode}")
        try:
            code, body = http_get(url)
            last = (code, body)
            if code == want:
                return json.loads(body)
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{url} did not answer {want} within the bound (last: {last})")


def smtp_session(port: int, ca_file, user: str | None = "ch-test", password: str = PASSWORD) -> smtplib.SMTP:
    import ssl

    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("dpi.ch-test.example")
    s.starttls(context=ssl.create_default_context(cafile=str(ca_file)))
    s.ehlo("dpi.ch-test.example")
    if user:
        s.login(user, password)
    return s


def message(subject: str = "Lettre de liaison", to: str = "dr@medecin.mssante.fr", size: int = 0) -> bytes:
    body = "Bonjour,\r\nle compte rendu suit.\r\n" + ("x" * 70 + "\r\n") * (size // 72)
    return (f"From: <dpi@ch-test.example>\r\nTo: <{to}>\r\nSubject: {subject}\r\n"
            f"Message-ID: <{time.time_ns()}@test>\r\n\r\n{body}").encode()


def send(port: int, ca_file, rcpts: list[str], subject: str = "test", **kwargs) -> str:
    """Send one message; return the hub's message id."""
    with smtp_session(port, ca_file) as s:
        s.mail("dpi@ch-test.example")
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        code, text = s.data(message(subject, rcpts[0], **kwargs))
        assert code == 250, text
        return text.decode().rsplit(" ", 1)[1]


def terminate(proc: subprocess.Popen, timeout: float = 90) -> None:
    """SIGTERM a `hub serve` (or quickstart) and wait for it; killed if it does not stop in time."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def listeners(port: int) -> int:
    """How many sockets LISTEN on 127.0.0.1:port (from /proc/net/tcp)."""
    n = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state = fields[1], fields[3]
        if state == "0A" and int(local.split(":")[1], 16) == port:
            n += 1
    return n
