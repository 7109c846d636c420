"""Filter parsing, cursors, search keys and CSV export (no database)."""

import datetime as dt

import pytest

from hub.audit.search import MessageSummary, decode_cursor, encode_cursor, parse_filters, parse_time, to_csv
from hub.errors import InputError

UTC = dt.timezone.utc


def test_times():
    assert parse_time("2026-03-01") == dt.datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("2026-03-01", end=True) == dt.datetime(2026, 3, 2, tzinfo=UTC)
    assert parse_time("2026-03-01T10:00:00+01:00").utcoffset() == dt.timedelta(hours=1)
    assert parse_time("2026-03-01T10:00").tzinfo == UTC


def test_filters_record_the_patient_only_as_a_keyed_hash():
    f = parse_filters({"patient_ins": "277076322082910", "status": "dead", "rule_version": "3", "sender": " "},
                      b"k" * 32)
    facts = f.facts()
    assert set(facts) == {"patient_key", "status", "rule_version"} and len(facts["patient_key"]) == 64
    with pytest.raises(InputError):
        parse_filters({"patient_ins": "277076322082910"}, None)
    assert parse_filters({"patient_key": "ab" * 32}, None).patient_key == b"\xab" * 32


def test_cursor_round_trip():
    at = dt.datetime(2026, 1, 2, 3, 4, 5, 6789, tzinfo=UTC)
    assert decode_cursor(encode_cursor(at, "m-1")) == (at, "m-1")
    with pytest.raises(InputError):
        decode_cursor("not a cursor")


def test_csv_neutralises_formulas():
    m = MessageSummary(message_id="m", received_at=dt.datetime(2026, 1, 1, tzinfo=UTC), sender="=cmd()@x.fr",
                       recipients=["a@x.fr", "b@x.fr"])
    line = to_csv([m]).splitlines()[1]
    assert "'=cmd()@x.fr" in line and "a@x.fr b@x.fr" in line
