"""The message shape limits (hub.intake.limits) against a plain line-by-line reading."""

from hypothesis import given, settings, strategies as st

from hub.intake import limits


def naive(data: bytes, limit: int = limits.MAX_LINE):
    for n, line in enumerate(data.split(b"\n"), start=1):
        length = len(line) - line.endswith(b"\r")
        if length > limit:
            return n, length
    return None


lines = st.lists(st.integers(min_value=0, max_value=1300), min_size=1, max_size=40)


@settings(max_examples=300, deadline=None)
@given(lines, st.booleans(), st.sampled_from([b"\r\n", b"\n"]))
def test_long_line_agrees_with_reading_every_line(lengths, final_newline, eol):
    data = eol.join(b"x" * n for n in lengths) + (eol if final_newline else b"")
    assert limits.long_line(data) == naive(data)


def test_limits_of_the_header_section():
    ok = b"From: a\r\nSubject: b\r\n c\r\n\r\nbody\r\n"
    assert limits.header_section(ok, 1000, 10**6) == (len(b"From: a\r\nSubject: b\r\n c\r\n"), 2)
    # no empty line: the header section ends at the first line that is not a field
    text = b"From: a\r\nSubject: b\r\n" + b"just text, no colon\r\n" * 5000
    assert limits.header_section(text, 1000, 10**6) == (len(b"From: a\r\nSubject: b\r\n"), 2)
    many = b"".join(b"X-%d: v\r\n" % i for i in range(1500)) + b"\r\nbody\r\n"
    assert limits.header_section(many, 1000, 10**6)[1] > 1000
    assert "more than 1000 header fields" in limits.refusal(many, max_header_size=10**6, max_header_fields=1000)
    assert limits.refusal(ok, max_header_size=100, max_header_fields=10) is None
