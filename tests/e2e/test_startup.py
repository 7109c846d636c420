"""Start-up errors of a real `hub serve` process: each configuration mistake stops it at once with one line naming
the setting and the file or address, and a non-zero exit (2: configuration, not to be respawned; 1: database
unreachable). No database is started for these: the checks come first."""

import json
import os
import pwd
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from tests.e2e.serve_support import ROOT, as_user, clean_env, hub_cmd, run_hub, write_config
from tests.support import free_port


@pytest.fixture
def base(tmp_path, pki):
    return write_config(tmp_path / "hub.toml", pki, data_dir=tmp_path / "var", smtp_port=free_port(),
                        http_port=free_port(), transport={})


def serve(config, **env):
    return run_hub(config, "serve", env=clean_env(**env), timeout=60)


def one_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    record = json.loads(lines[0])
    assert record["event"] == "startup_failed" and record["level"] == "error"
    return record["error"]


@pytest.mark.parametrize("setting, env, expected", [
    ("smtp.listen", {"HUB_SMTP_LISTEN": "127.0.0.1:99999"}, "port 99999 is out of range"),
    ("http.listen", {"HUB_HTTP_LISTEN": "127.0.0.1:70000"}, "port 70000 is out of range"),
    ("smtp.listen", {"HUB_SMTP_LISTEN": "no-such-host.invalid:2525"}, "cannot resolve"),
    ("smtp.listen", {"HUB_SMTP_LISTEN": "192.0.2.1:2525"}, "address not available"),
    ("rules.dir", {"HUB_RULES_DIR": "/nonexistent/rules"}, "/nonexistent/rules: no such directory"),
    ("smtp.tls_cert", {"HUB_SMTP_TLS_CERT": "/nonexistent/smtp.pem"}, "/nonexistent/smtp.pem: no such file"),
    ("delivery.client_key", {"HUB_DELIVERY_CLIENT_KEY": "/nonexistent/cli.key"}, "/nonexistent/cli.key: no such"),
    ("delivery.ca_file", {"HUB_DELIVERY_CA_FILE": "/nonexistent/roots.pem"}, "/nonexistent/roots.pem: no such"),
    ("smtp.client_ca_file", {"HUB_SMTP_CLIENT_CA_FILE": "/nonexistent/ca.pem"}, "/nonexistent/ca.pem: no such"),
    ("transform.cda_schema", {"HUB_TRANSFORM_CDA_SCHEMA": "/nonexistent/CDA.xsd"}, "no such file"),
])
def test_configuration_errors_stop_with_one_line(base, setting, env, expected):
    proc = serve(base, **env)
    assert proc.returncode == 2, proc.stderr
    error = one_line(proc)
    assert setting in error and expected in error


def test_mismatched_key_and_not_pem_files(base, pki, tmp_path):
    # the delivery certificate with the SMTP server's key: checked at start, not at the first delivery
    proc = serve(base, HUB_DELIVERY_CLIENT_KEY=str(pki["hub_server"][1]))
    assert proc.returncode == 2
    error = one_line(proc)
    assert "delivery.client_cert" in error and "does not match" in error and str(pki["hub_server"][1]) in error
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    proc = serve(base, HUB_DELIVERY_CA_FILE=str(junk))
    assert proc.returncode == 2 and "delivery.ca_file" in one_line(proc) and "no PEM certificate" in proc.stderr
    proc = serve(base, HUB_SMTP_TLS_KEY=str(junk))
    assert proc.returncode == 2 and "smtp.tls_key" in one_line(proc) and "not a PEM private key" in proc.stderr
    proc = serve(base, HUB_SMTP_TLS_CERT=str(tmp_path))
    assert proc.returncode == 2 and "is a directory" in one_line(proc)


def test_ports_in_use(base):
    with socket.socket() as other:           # any program on the port, without SO_REUSEPORT
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        for var, setting in (("HUB_SMTP_LISTEN", "smtp.listen"), ("HUB_HTTP_LISTEN", "http.listen")):
            proc = serve(base, **{var: f"127.0.0.1:{port}"})
            assert proc.returncode == 2
            error = one_line(proc)
            assert setting in error and f"127.0.0.1:{port}" in error and "address already in use" in error
    with socket.socket() as other:           # even a program that allows SO_REUSEPORT cannot be joined
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen()
        port = other.getsockname()[1]
        proc = serve(base, HUB_SMTP_LISTEN=f"127.0.0.1:{port}")
        assert proc.returncode == 2 and "address already in use" in one_line(proc)


def test_unreachable_database_exits_1(base):
    port = free_port()
    proc = serve(base, HUB_DATABASE_URL=f"postgresql://hub_app:secret@127.0.0.1:{port}/hub")
    assert proc.returncode == 1
    error = one_line(proc)
    assert "database.url" in error and f"127.0.0.1:{port}" in error and "secret" not in error


def test_a_terminal_gets_plain_text(base):
    """On a terminal the same line is plain text (`hub: error: ...`): run through `script` when available."""
    if shutil.which("script") is None:
        pytest.skip("util-linux `script` not installed")
    cmd = " ".join(hub_cmd(base, "serve"))
    proc = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True, timeout=60,
                          env=clean_env(HUB_RULES_DIR="/nonexistent/rules"))
    assert "hub: error: setting rules.dir: /nonexistent/rules: no such directory" in proc.stdout
    assert "{" not in proc.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run the hub as another user")
def test_unreadable_key_names_the_user(pki):
    import tempfile

    nobody = pwd.getpwnam("nobody")
    d = Path(tempfile.mkdtemp(prefix="hub-unreadable-"))
    try:
        d.chmod(0o755)
        cert, key = d / "smtp.pem", d / "smtp.key"
        shutil.copy(pki["hub_server"][0], cert)
        shutil.copy(pki["hub_server"][1], key)
        cert.chmod(0o644)
        key.chmod(0o600)                          # root's: the hub, run as `nobody`, cannot read it
        data = d / "var"
        data.mkdir()
        os.chown(data, nobody.pw_uid, nobody.pw_gid)
        config = write_config(d / "hub.toml", pki, data_dir=data, smtp_port=free_port(), http_port=free_port(),
                              transport={})
        config.chmod(0o644)
        with as_user("nobody") as prefix:
            proc = subprocess.run([*prefix, *hub_cmd(config, "serve")], capture_output=True, text=True, cwd=ROOT,
                                  env=clean_env(HUB_SMTP_TLS_CERT=str(cert), HUB_SMTP_TLS_KEY=str(key)), timeout=60)
        assert proc.returncode == 2, proc.stderr
        error = one_line(proc)
        assert "smtp.tls_key" in error and "permission denied" in error and "nobody" in error
    finally:
        shutil.rmtree(d, ignore_errors=True)
