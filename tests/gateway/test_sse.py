"""The SSE parser against the WHATWG event-stream rules, fed whole and byte by byte."""

from __future__ import annotations

import pytest

from tollhouse.gateway.sse import SseError, SseEvent, SseParser

STREAM = (
    b": keep-alive comment\n"
    b"event: message\n"
    b"id: 7\n"
    b'data: {"a":\n'
    b"data:1}\n"
    b"\n"
    b"id: 8\n"
    b"retry: 1500\n"
    b"\n"  # an id without data is not dispatched (a priming event)
    b"data\n"  # a field name alone means an empty value
    b"\n"
    b"event: other\n"
    b"data:  two spaces keep one\n"
    b"\n"
)
EXPECTED = [
    SseEvent("message", '{"a":\n1}', "7"),
    SseEvent("message", "", "8"),
    SseEvent("other", " two spaces keep one", "8"),
]


def feed_all(parser: SseParser, chunks: list[bytes]) -> list[SseEvent]:
    """Events from feeding each chunk in turn."""
    return [event for chunk in chunks for event in parser.feed(chunk)]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending_gives_the_same_events(newline: bytes) -> None:
    parser = SseParser()
    assert parser.feed(STREAM.replace(b"\n", newline)) == EXPECTED
    assert parser.last_event_id == "8"
    assert parser.retry_ms == 1500


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_byte_by_byte_feeding_gives_the_same_events(newline: bytes) -> None:
    data = STREAM.replace(b"\n", newline)
    assert feed_all(SseParser(), [data[i : i + 1] for i in range(len(data))]) == EXPECTED


def test_a_crlf_split_across_chunks_is_one_line_end() -> None:
    parser = SseParser()
    assert parser.feed(b"data: x\r") == []
    assert parser.feed(b"\n\r") == [SseEvent("message", "x")]
    assert parser.feed(b"\ndata: y\r\n\r\n") == [SseEvent("message", "y")]


def test_a_leading_utf8_bom_is_ignored() -> None:
    assert feed_all(SseParser(), [b"\xef\xbb", b"\xbfdata: x\n\n"]) == [SseEvent("message", "x")]


def test_utf8_split_across_chunks_is_decoded_whole() -> None:
    encoded = "data: café\n\n".encode()
    assert feed_all(SseParser(), [encoded[:9], encoded[9:]]) == [SseEvent("message", "café")]


def test_an_event_larger_than_the_limit_is_refused() -> None:
    parser = SseParser(max_event_bytes=10)
    parser.feed(b"data: 12345\n")
    with pytest.raises(SseError):
        parser.feed(b"data: 67890\n")


def test_an_unfinished_line_larger_than_the_limit_is_refused() -> None:
    with pytest.raises(SseError):
        SseParser(max_event_bytes=10).feed(b"data: " + b"x" * 20)
