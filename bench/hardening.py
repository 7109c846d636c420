"""CPU cost of the input checks issue #11 added on the message path, per message, one core:

    .venv/bin/python bench/hardening.py [--rounds N]

* intake: the shape limits at the end of DATA (hub.intake.limits.refusal: lines over 998 characters, header
  section size and field count), on a 5 KB text message and a 100 KB message with a base64 attachment;
* audit: the text boundary of the audit store (hub.audit.store._row: NUL and undecodable bytes replaced), on the
  `received` and `routed` events of one message, against the plain JSON encoding it wraps;
* revocation: one verdict for a certificate (hub.revocation.checker.judge, a CRL of 10,000 entries in memory).

Figures are medians of `--rounds` timings (CPU time of the process), with the load average printed: the machine is
shared, compare within one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hub.audit import store as audit_store  # noqa: E402
from hub.audit.store import Event  # noqa: E402
from hub.intake import limits  # noqa: E402

HEAD = (b"Received: from dpi.ch-test.example ([10.0.0.1])\r\n\tby hub.example.org (hub) with ESMTPSA id x;"
        b" Mon, 23 Nov 2026 10:00:00 +0100\r\nX-MSS-NIL: HUB-REGIONAL\r\nFrom: <dpi@ch-test.example>\r\n"
        b"To: <dr.martin@medecin.mssante.fr>\r\nSubject: Lettre de liaison\r\nMessage-ID: <1@test>\r\n"
        b"MIME-Version: 1.0\r\n")


def messages() -> dict[str, bytes]:
    text = HEAD + b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Compte rendu, ligne de texte.\r\n" * 170
    pdf = base64.encodebytes(os.urandom(72_000)).replace(b"\n", b"\r\n")
    mixed = (HEAD + b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\n'
             b"Bonjour\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
             + pdf + b"--b--\r\n")
    return {f"{len(text) // 1000} KB text": text, f"{len(mixed) // 1000} KB with attachment": mixed}


def per_call(fn, n: int, rounds: int) -> float:
    """Median CPU microseconds per call."""
    samples = []
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(n):
            fn()
        samples.append((time.process_time() - start) / n * 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}, "
          f"{os.cpu_count()} cores")
    for name, body in messages().items():
        us = per_call(lambda: limits.refusal(body, max_header_size=262144, max_header_fields=1000), 2000,
                      args.rounds)
        print(f"intake shape limits, {name:24} {us:7.1f} us per message")
    received = Event("received", message_id="1a2b3c", account="ch-test", sender="dpi@ch-test.example",
                     recipients=("dr.martin@medecin.mssante.fr",),
                     facts={"peer": "10.0.0.1", "helo": "dpi.ch-test.example", "tls": "TLSv1.3", "size": 5200,
                            "login": "auth"})
    routed = Event("routed", message_id="1a2b3c", account="ch-test", sender="dpi@ch-test.example",
                   recipient="dr.martin@medecin.mssante.fr", rule_version=3, facts={
                       "rule_id": "default", "rcpt": "dr.martin@medecin.mssante.fr", "content": "other",
                       "doc_code": None, "size": 5200, "headers": {}, "actions": "deliver",
                       "resolution": {"method": "address", "kind": "practitioner", "flagged": False,
                                      "reason": "published mailbox", "paper": False}})
    events = [received, routed]
    with_check = per_call(lambda: [audit_store._row(e) for e in events], 20000, args.rounds)

    def plain():
        for e in events:
            json.dumps(dict(e.facts), separators=(",", ":"), ensure_ascii=False, default=str)
    without = per_call(plain, 20000, args.rounds)
    print(f"audit rows of one message (2 events)     {with_check:7.1f} us (JSON encoding alone {without:.1f} us:"
          f" the text check adds {with_check - without:.1f} us)")
    try:
        verdict_us = _revocation(args.rounds)
    except ImportError as exc:        # run outside the test environment (trustme absent)
        print(f"revocation verdict: skipped ({exc})")
    else:
        print(f"revocation verdict, CRL of 10,000 entries {verdict_us:7.1f} us per new connection")


def _revocation(rounds: int) -> float:
    import tempfile

    import trustme
    from cryptography import x509

    from hub.revocation.checker import Source, judge, load_issuers, parse_crl
    from tests.support import SigningCA

    base = Path(tempfile.mkdtemp(prefix="bench-crl-"))
    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(base / "ca.pem"))
    ca = SigningCA(authority, base)
    url = "http://crl.example/ca.crl"
    cert_path, _, _ = ca.issue("peer", url, common_name="smtp.operator.example")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    crl = parse_crl(url, ca.crl(range(1, 10_001)), load_issuers([base / "ca.pem"]))
    sources = {url: Source(url, crl=crl)}
    from datetime import datetime, timezone
    now = datetime.now(timezone.utc)
    return per_call(lambda: judge(cert, [url], sources, now), 20000, rounds)


if __name__ == "__main__":
    main()
