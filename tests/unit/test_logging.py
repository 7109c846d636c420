"""The service's log never carries what an unparsable HTTP request held (its query string may hold an INS)."""

import json
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
