"""The DATA payload the delivery client writes must be what aiosmtplib's `data()` sends for the same body (a well-kept
client as the reference)."""

from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given, settings, strategies as st

from hub.delivery.client import wire_data


def aiosmtplib_payload(body: bytes) -> bytes:
    return PERIOD_REGEX.sub(b"..", normalize_message_line_endings(body)) + b".\r\n"


def test_dots_at_line_starts_are_doubled_and_the_end_marker_added():
    assert wire_data(b"Subject: x\r\n\r\n.hidden\r\n..two\r\nend") == \
        b"Subject: x\r\n\r\n..hidden\r\n...two\r\nend\r\n.\r\n"
    assert wire_data(b".first") == b"..first\r\n.\r\n"
    assert wire_data(b"") == b"\r\n.\r\n"


def test_bare_line_endings_are_normalised_before_stuffing():
    assert wire_data(b"a\n.b\rc\r\n") == b"a\r\n..b\r\nc\r\n.\r\n"


@settings(max_examples=500)
@given(st.lists(st.sampled_from([b"a", b"b", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"\xe9"]), max_size=40))
def test_same_payload_as_aiosmtplib(pieces):
    body = b"".join(pieces)
    assert wire_data(body) == aiosmtplib_payload(body)
