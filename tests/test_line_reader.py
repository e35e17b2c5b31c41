"""LineReader: the same input fed at every chunk size gives the same lines
(as Twisted's LineReceiver tests do), with the length bound."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gchat.protocol import TOO_LONG, LineReader


def feed_in_chunks(data: bytes, size: int, max_line: int):
    reader = LineReader(max_line)
    out = []
    for i in range(0, len(data), size):
        out += reader.feed(data[i : i + size])
    return out + reader.finish(), reader


def every_chunking(data, max_line):
    """Results for every chunk size 1..len(data); asserts they agree."""
    results = [feed_in_chunks(data, size, max_line)[0] for size in range(1, max(len(data), 1) + 1)]
    for result in results[1:]:
        assert result == results[0]
    return results[0]


def test_splits_lines_at_every_chunk_size():
    assert every_chunking(b"hello\nworld\n", 100) == [b"hello", b"world"]


def test_crlf_is_accepted_and_the_cr_dropped():
    assert every_chunking(b"one\r\ntwo\n", 100) == [b"one", b"two"]


def test_only_one_trailing_cr_is_dropped_and_inner_crs_stay():
    assert every_chunking(b"a\rb\r\r\n", 100) == [b"a\rb\r"]


def test_empty_lines_are_lines():
    assert every_chunking(b"\n\r\n\n", 100) == [b"", b"", b""]


def test_unterminated_last_line_comes_out_at_finish():
    assert every_chunking(b"a\nlast", 100) == [b"a", b"last"]
    assert every_chunking(b"a\nlast\r", 100) == [b"a", b"last"]
    assert every_chunking(b"\r", 100) == [b""]  # as the seed's Scanner: an empty token


def test_a_line_of_exactly_max_line_bytes_is_accepted():
    assert every_chunking(b"12345\n12345\r\n", 5) == [b"12345", b"12345"]


def test_a_longer_line_is_replaced_by_too_long_and_the_next_line_survives():
    assert every_chunking(b"ok\n123456\nnext\n", 5) == [b"ok", TOO_LONG, b"next"]


def test_too_long_is_reported_once_however_long_the_line():
    assert every_chunking(b"x" * 50 + b"\nafter\n", 5) == [TOO_LONG, b"after"]


def test_an_endless_line_never_holds_more_than_max_line_bytes():
    reader = LineReader(8)
    out = reader.feed(b"x" * 5)
    for _ in range(10_000):
        out += reader.feed(b"y" * 7)
        assert reader.buffered <= 8 + 1
    assert out == [TOO_LONG]
    assert reader.feed(b"tail\nnext\n") == [b"next"]


def test_max_line_must_be_positive():
    with pytest.raises(ValueError):
        LineReader(0)


def reference_split(data: bytes, max_line: int):
    """The obvious, unbounded way to get the same answer."""
    pieces = data.split(b"\n")
    tail = pieces.pop()
    lines = [piece[:-1] if piece.endswith(b"\r") else piece for piece in pieces]
    if tail:
        lines.append(tail[:-1] if tail.endswith(b"\r") else tail)
    return [line if len(line) <= max_line else TOO_LONG for line in lines]


@settings(max_examples=300, deadline=None)
@given(
    data=st.binary(max_size=300),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=30),
    max_line=st.integers(1, 30),
)
def test_any_bytes_at_any_chunking_match_a_reference_split(data, sizes, max_line):
    reader = LineReader(max_line)
    out, position, i = [], 0, 0
    while position < len(data):
        size = sizes[i % len(sizes)]
        out += reader.feed(data[position : position + size])
        position += size
        i += 1
        assert reader.buffered <= max_line + 1
    out += reader.finish()
    expected = reference_split(data, max_line)
    # An unterminated over-long tail is reported when it overflows, and
    # finish() then has nothing: the same single TOO_LONG in both.
    assert out == expected
