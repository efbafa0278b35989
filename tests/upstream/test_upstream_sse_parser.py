"""The event-stream parser, against the edge cases of the HTML standard's definition."""

from __future__ import annotations

import pytest

from broker.proxy.upstream.sse_parser import ServerSentEvent, SseEventTooLarge, SseParser


def parse(*chunks: bytes) -> list[ServerSentEvent]:
    parser = SseParser()
    return [event for chunk in chunks for event in parser.feed(chunk)]


def test_a_plain_message_event() -> None:
    assert parse(b'event: message\ndata: {"id": 1}\n\n') == [ServerSentEvent("message", '{"id": 1}', None)]


def test_the_event_type_defaults_to_message_and_resets_after_each_event() -> None:
    events = parse(b"event: endpoint\ndata: /messages?s=1\n\ndata: x\n\n")
    assert [(event.event, event.data) for event in events] == [
        ("endpoint", "/messages?s=1"),
        ("message", "x"),
    ]


def test_data_lines_join_with_newlines() -> None:
    assert [event.data for event in parse(b"data: one\ndata:two\ndata\ndata:  three\n\n")] == [
        "one\ntwo\n\n three"
    ]


def test_comments_and_unknown_fields_are_ignored() -> None:
    assert [event.data for event in parse(b": keep-alive\n:\nfoo: bar\ndata: x\n\n")] == ["x"]


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(newline: bytes) -> None:
    stream = newline.join([b"event: a", b"data: 1", b"", b"data: 2", b"", b""])
    assert [(event.event, event.data) for event in parse(stream)] == [("a", "1"), ("message", "2")]


def test_a_crlf_split_across_chunks_is_one_line_ending() -> None:
    assert [event.data for event in parse(b"data: 1\r", b"\n\r", b"\ndata: 2\r\n\r\n")] == ["1", "2"]


def test_byte_by_byte_feeding_gives_the_same_events() -> None:
    stream = "\ufeffevent: e\r\nid: 7\r\ndata: é€😀\r\n\r\n: c\ndata: b\n\n".encode()
    whole = parse(stream)
    assert parse(*(stream[index : index + 1] for index in range(len(stream)))) == whole
    assert whole == [ServerSentEvent("e", "é€😀", "7"), ServerSentEvent("message", "b", "7")]


def test_a_byte_order_mark_is_dropped_only_at_the_start() -> None:
    assert parse(b"\xef\xbb", b"\xbfdata: x\n\n") == [ServerSentEvent("message", "x", None)]
    assert [event.data for event in parse(b"data: x\n\n\xef\xbb\xbfdata: y\n\n")] == ["x"]


def test_ids_persist_and_ids_with_nul_are_ignored() -> None:
    parser = SseParser()
    events = parser.feed(b"id: 1\ndata: a\n\ndata: b\n\nid: 2\x00\ndata: c\n\nid\ndata: d\n\n")
    assert [event.id for event in events] == ["1", "1", "1", ""]
    assert parser.last_event_id == ""


def test_retry_takes_only_digits() -> None:
    parser = SseParser()
    parser.feed(b"retry: 1500\n\nretry: 2s\n\nretry: -1\n\nretry:\n\n")
    assert parser.retry_ms == 1500


def test_an_event_without_data_is_not_dispatched_but_empty_data_is() -> None:
    parser = SseParser()
    events = parser.feed(b"event: ping\nid: 5\n\ndata:\n\n")
    assert events == [ServerSentEvent("message", "", "5")]
    assert parser.events_seen == 1


def test_a_trailing_partial_event_is_never_dispatched() -> None:
    parser = SseParser()
    assert parser.feed(b"data: complete\n\ndata: partial\n") == [ServerSentEvent("message", "complete", None)]
    assert parser.feed(b"data: more") == []


def test_an_oversized_event_is_refused() -> None:
    parser = SseParser(max_event_bytes=10)
    with pytest.raises(SseEventTooLarge):
        parser.feed(b"data: 123456\ndata: 7890\n")
    with pytest.raises(SseEventTooLarge):
        SseParser(max_event_bytes=10).feed(b"data: a line that never ends")


def test_a_continued_stream_keeps_id_and_retry_but_not_partial_lines() -> None:
    parser = SseParser()
    parser.feed(b"retry: 50\nid: 3\ndata: a\n\ndata: cut off")
    successor = parser.continued()
    assert (successor.last_event_id, successor.retry_ms, successor.events_seen) == ("3", 50, 1)
    assert successor.feed(b"data: b\n\n") == [ServerSentEvent("message", "b", "3")]
