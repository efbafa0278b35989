"""Incremental parser for ``text/event-stream`` bodies, as the HTML standard defines them.

Fed raw byte chunks in whatever sizes the network delivers, it returns the events they
complete. Lines end in CRLF, LF or CR (also when a CRLF is split across chunks); a leading
byte-order mark is dropped; ``:`` lines are comments; ``data`` lines accumulate, joined by
newlines; ``id`` persists across events until replaced; ``retry`` takes only digits; an
event without any ``data`` line is not dispatched; a partial event at the end of the stream
is discarded. Values are decoded as UTF-8 once a line is complete, so multi-byte characters
split across chunks decode correctly.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MAX_EVENT_BYTES = 64 * 1024 * 1024
_BOM = b"\xef\xbb\xbf"


class SseEventTooLarge(ValueError):
    """One event (or one unterminated line) outgrew the parser's size limit."""


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    event: str
    """The event type; ``"message"`` when the stream did not name one."""
    data: str
    id: str | None
    """The stream's last event id as of this event (ids persist across events)."""


class SseParser:
    def __init__(self, *, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> None:
        self._max_event_bytes = max_event_bytes
        self._partial_line = b""
        self._skip_leading_lf = False
        self._at_stream_start = True
        self._data: list[bytes] = []
        self._data_size = 0
        self._event_type = ""
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        """The reconnection delay the server asked for, if it sent one."""
        self.events_seen = 0

    def continued(self) -> SseParser:
        """A parser for the stream reopened after this one ended: new lines, same event id and retry."""
        successor = SseParser(max_event_bytes=self._max_event_bytes)
        successor.last_event_id = self.last_event_id
        successor.retry_ms = self.retry_ms
        successor.events_seen = self.events_seen
        return successor

    def feed(self, chunk: bytes) -> list[ServerSentEvent]:
        buffer = self._partial_line + chunk if self._partial_line else chunk
        if self._at_stream_start:
            if len(buffer) < len(_BOM) and _BOM.startswith(buffer):
                self._partial_line = buffer
                return []
            self._at_stream_start = False
            if buffer.startswith(_BOM):
                buffer = buffer[len(_BOM) :]
        if self._skip_leading_lf and buffer:
            # The previous chunk ended in CR; an LF opening this one completes that CRLF.
            self._skip_leading_lf = False
            if buffer[0] == 0x0A:
                buffer = buffer[1:]
        if b"\r" in buffer:
            self._skip_leading_lf = buffer.endswith(b"\r")
            buffer = buffer.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buffer.split(b"\n")
        self._partial_line = lines.pop()
        if len(self._partial_line) > self._max_event_bytes:
            raise SseEventTooLarge(f"an event stream line exceeds {self._max_event_bytes} bytes")
        events: list[ServerSentEvent] = []
        for line in lines:
            if line:
                self._take_field(line)
            elif self._data:
                events.append(self._dispatch())
            else:
                self._event_type = ""
        return events

    def _take_field(self, line: bytes) -> None:
        if line[0] == 0x3A:  # ":" starts a comment, often a keep-alive
            return
        field, colon, value = line.partition(b":")
        if colon and value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data_size += len(value) + 1
            if self._data_size > self._max_event_bytes:
                raise SseEventTooLarge(f"an event's data exceeds {self._max_event_bytes} bytes")
            self._data.append(value)
        elif field == b"event":
            self._event_type = value.decode("utf-8", "replace")
        elif field == b"id":
            if b"\x00" not in value:
                self.last_event_id = value.decode("utf-8", "replace")
        elif field == b"retry" and value.isdigit():
            self.retry_ms = int(value)

    def _dispatch(self) -> ServerSentEvent:
        data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
        event = ServerSentEvent(
            event=self._event_type or "message",
            data=data.decode("utf-8", "replace"),
            id=self.last_event_id,
        )
        self._data = []
        self._data_size = 0
        self._event_type = ""
        self.events_seen += 1
        return event
