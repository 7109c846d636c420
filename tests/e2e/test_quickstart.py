"""The README's next step, as a newcomer runs it: `hub quickstart`, then the printed `curl` command; the message is
delivered to the stand-in operator over mutual TLS and its audit timeline shows it."""

import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.e2e.serve_support import ROOT, clean_env, shared_tmp
from tests.support import free_port


class Output:
    """Everything the process printed so far (read from the pipe without blocking)."""

    def __init__(self, proc):
        self.proc, self.text = proc, ""

    def until(self, pattern: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            if re.search(pattern, self.text):
                return self.text
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    break
                self.text += chunk.decode("utf-8", "replace")
            elif self.proc.poll() is not None:
                break
        raise AssertionError(f"{pattern!r} not printed within the bound; got:\n{self.text}")


@pytest.fixture
def qs_dir():
    with shared_tmp("hub-quickstart-") as d:
        yield d / "qs"


def test_quickstart_delivers_a_message(qs_dir):
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    d = qs_dir
    ports = [str(free_port()) for _ in range(3)]
    proc = subprocess.Popen([sys.executable, "-m", "hub", "quickstart", "--dir", str(d), "--smtp-port", ports[0],
                             "--http-port", ports[1], "--operator-port", ports[2]], cwd=ROOT, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = Output(proc)
    try:
        text = out.until("Ctrl-C stops")
        command = re.search(r"^  (curl .*?--upload-file \S+)$", text, re.S | re.M).group(1)
        command = command.replace("\\\n", " ")
        sent = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert sent.returncode == 0, sent.stderr
        text = out.until(r"audit timeline \w+")
        mid = re.search(r"received message (\w+)", text).group(1)
        timeline_cmd = re.search(r"see its audit trail: (.*audit timeline \w+)", text).group(1)
        timeline = subprocess.run(shlex.split(timeline_cmd), cwd=ROOT, capture_output=True, text=True,
                                  env=clean_env(), timeout=60)
        assert timeline.returncode == 0, timeline.stderr
        assert mid in timeline.stdout and " delivered " in timeline.stdout and "login=auth" in timeline.stdout
        saved = list((d / "operator").glob("*.eml"))
        assert len(saved) == 1 and b"Subject: Lettre de liaison (quickstart)" in saved[0].read_bytes()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            proc.kill()
        if proc.stdout:
            proc.stdout.close()
        from hub.db import Embedded

        Embedded(d / "data").stop("immediate")
    assert proc.returncode == 0
    assert not os.path.exists(d / "data" / "pg" / "postmaster.pid")
