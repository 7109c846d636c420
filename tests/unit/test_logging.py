"""The service's log never carries what an unparsable HTTP request held (its query string may hold an INS)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging
from aiohttp.http_exceptions import LineTooLong
from hub import observability
observability.configure_logging(json=True)
try:
    raise LineTooLong(b"/api/audit/messages?patient_ins=279035121518989&x=" + b"a" * 9000, "8190")
except LineTooLong:
    logging.getLogger("aiohttp.server").exception("Error handling request from %s", "127.0.0.1")
"""


def test_an_unparsable_http_request_is_one_warning_without_the_request():
    """aiohttp logs such a request (a request line over 8 KB) with its traceback and the request line itself."""
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, proc.stderr
    [line] = proc.stderr.splitlines()
    record = json.loads(line)
    assert record["level"] == "warning" and record["event"] == "http_bad_request: LineTooLong (status 400)"
    assert "279035121518989" not in line and "Traceback" not in line and "exception" not in record


WRITES = """
import io, json, logging, sys
import structlog
from hub import observability

class Recorder(io.TextIOBase):
    def __init__(self):
        self.calls = []
    def write(self, text):
        self.calls.append(text)
        return len(text)
    def writable(self):
        return True

rec = Recorder()
sys.stderr = rec
observability.configure_logging(json=True)
structlog.get_logger("hub").info("message_delivered", message_id="m1", reply="250 2.0.0 Ok")
logging.getLogger("aiosmtpd").warning("a library's record")
print(json.dumps([c for c in rec.calls if c]), file=sys.__stdout__)
"""


def test_each_log_record_is_one_write_with_its_newline():
    """The supervisor and its workers write one log; with PYTHONUNBUFFERED=1 each write is a system call, and a
    record written apart from its newline let another process's record land on the same line (seen in CI: two
    JSON records on one line). Each record, hub's or a library's, must be one write ending in its newline."""
    proc = subprocess.run([sys.executable, "-c", WRITES], capture_output=True, text=True, cwd=ROOT, timeout=60,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    calls = json.loads(proc.stdout)
    assert len(calls) == 2, calls
    for call in calls:
        assert call.endswith("\n") and call.count("\n") == 1, calls
        json.loads(call)
    assert json.loads(calls[0])["event"] == "message_delivered"
