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


def intake_before(raw: bytes) -> bytes:
    """What intake made of the DATA bytes before it marked messages in wire form (the reference)."""
    import re

    if raw.count(b"\n") != raw.count(b"\r\n"):
        raw = re.sub(rb"(?<!\r)\n", b"\r\n", raw)
    if raw.startswith(b"."):
        raw = raw[1:]
    return raw.replace(b"\r\n.", b"\r\n")


@settings(max_examples=1000)
@given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r", b"\n", b"\r\n", b"\r\n.", b"\r\n..", b"\xe9"]),
                max_size=40))
def test_a_message_marked_in_wire_form_is_sent_as_the_full_scan_would_send_it(pieces):
    """Intake reads the DATA bytes (which end with CRLF, or are empty) into the message; when it marks it in wire
    form, the delivery sends it as it is: the same bytes as the scanning path and as aiosmtplib."""
    from hub.delivery.client import WireBody
    from hub.intake.protocol import data_content

    raw = b"".join(pieces)
    raw += b"" if not raw or raw.endswith(b"\r\n") else b"\r\n"
    content, wire_form = data_content(raw)
    assert content == intake_before(raw)
    if wire_form:
        assert wire_data(WireBody(content)) == wire_data(content) == aiosmtplib_payload(content)
        assert wire_data(WireBody(b"Received: x\r\n" + content)) == aiosmtplib_payload(b"Received: x\r\n" + content)


def test_common_messages_are_in_wire_form_and_the_others_are_not():
    from hub.intake.protocol import data_content

    assert data_content(b"Subject: x\r\n\r\nline. end.\r\n") == (b"Subject: x\r\n\r\nline. end.\r\n", True)
    assert data_content(b"Subject: x\r\n\r\n..dot\r\n") == (b"Subject: x\r\n\r\n.dot\r\n", False)
    assert data_content(b"Subject: x\n\nbare\r\n") == (b"Subject: x\r\n\r\nbare\r\n", False)
    assert data_content(b"Subject: x\r\n\r\na\rb\r\n")[1] is False
    assert data_content(b"")[1] is False



def own_wire_form(data: bytes) -> bool:
    """Every line ends with CRLF (no bare CR or LF anywhere, CRLF at the end) and no line starts with a dot."""
    lines = data.split(b"\r\n")
    return bool(data) and lines[-1] == b"" and not any(b"\r" in line or b"\n" in line or line.startswith(b".")
                                                        for line in lines[:-1])


@settings(max_examples=1000)
@given(st.lists(st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\n\r", b"\r\r\n", b"\r\n.", b"\xe9"]),
                max_size=40))
def test_the_wire_form_mark_is_given_to_every_message_already_in_wire_form_and_only_to_such(pieces):
    """Checked line by line against the counts intake uses: DATA bytes that are their own wire form are marked
    (the delivery's fast path), and a marked message is its own wire form."""
    from hub.intake.protocol import data_content

    raw = b"".join(pieces)
    raw += b"" if not raw or raw.endswith(b"\r\n") else b"\r\n"
    content, wire_form = data_content(raw)
    if own_wire_form(raw):
        assert wire_form
    if wire_form:
        assert own_wire_form(content)
