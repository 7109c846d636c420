"""CRL parsing, verdicts and the fetch schedule (pure parts of hub.revocation), with CRLs made by the test CA."""

import datetime as dt

import pytest
from cryptography import x509

from hub.revocation.checker import CrlError, Source, distribution_points, judge, load_issuers, next_fetch, parse_crl
from tests.support import SigningCA

URL = "http://crl.example/ca.crl"
NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)     # CRL times are in seconds


@pytest.fixture(scope="module")
def setup(pki):
    ca = SigningCA(pki["ca"], pki["dir"])
    cert_path, _, serial = ca.issue("unit-peer", URL, common_name="smtp.operator.example")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return ca, cert, serial, load_issuers([pki["ca_file"]]), SigningCA(pki["other_ca"], pki["dir"])


def test_verdicts(setup):
    ca, cert, serial, issuers, other = setup
    assert distribution_points(cert) == [URL]
    good = Source(URL, crl=parse_crl(URL, ca.crl([12345]), issuers))
    assert judge(cert, [URL], {URL: good}, NOW).status == "good"
    revoked = Source(URL, crl=parse_crl(URL, ca.crl([serial]), issuers))
    v = judge(cert, [URL], {URL: revoked}, NOW)
    assert v.status == "revoked" and f"{serial:#x}" in v.reason and "key_compromise" in v.reason
    v = judge(cert, [URL], {URL: Source(URL, error="HTTP 503")}, NOW)
    assert v.status == "unknown" and "HTTP 503" in v.reason
    assert judge(cert, [URL], {}, NOW).status == "unknown"                       # not fetched yet
    v = judge(cert, [URL], {URL: good}, NOW + dt.timedelta(days=2))              # past its nextUpdate
    assert v.status == "unknown" and "expired" in v.reason
    # no distribution point: a configured CRL of the issuer covers it, else nothing does
    assert judge(cert, [], {URL: Source(URL, configured=True, crl=revoked.crl)}, NOW).status == "revoked"
    assert judge(cert, [], {URL: Source(URL, configured=False, crl=revoked.crl)}, NOW).status == "uncovered"
    assert judge(cert, [], {URL: Source(URL, configured=True, error="timeout")}, NOW).status == "unknown"


def test_unusable_crls_are_refused_with_the_reason(setup):
    ca, _, _, issuers, other = setup
    with pytest.raises(CrlError, match="signature does not verify"):
        parse_crl(URL, ca.crl([], signer=other.key), issuers)
    with pytest.raises(CrlError, match="not among the configured CA"):
        parse_crl(URL, other.crl([]), issuers)
    with pytest.raises(CrlError, match="not a CRL"):
        parse_crl(URL, b"<html>503</html>", issuers)
    from cryptography.hazmat.primitives import serialization

    pem = x509.load_der_x509_crl(ca.crl([1])).public_bytes(serialization.Encoding.PEM)
    assert parse_crl(URL, pem, issuers).revoked.keys() == {1}                   # PEM is read too


def test_fetch_schedule_runs_ahead_of_next_update(setup):
    ca, _, _, issuers, _ = setup
    hour, day = dt.timedelta(hours=1), dt.timedelta(days=1)
    week = parse_crl(URL, ca.crl([], this_update=NOW, next_update=NOW + 7 * day), issuers)
    assert next_fetch(NOW, week, 3600, 300) == NOW + hour                      # the regular refresh comes first
    short = parse_crl(URL, ca.crl([], this_update=NOW - hour, next_update=NOW + hour), issuers)
    assert next_fetch(NOW, short, 3600, 300) == NOW + hour - dt.timedelta(minutes=30)   # a quarter ahead
    late = parse_crl(URL, ca.crl([], this_update=NOW - day, next_update=NOW + dt.timedelta(minutes=1)), issuers)
    assert next_fetch(NOW, late, 3600, 300) == NOW + dt.timedelta(seconds=300)  # never sooner than the retry
    assert next_fetch(NOW, None, 3600, 300) == NOW + hour
