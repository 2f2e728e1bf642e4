"""The wire form of a message in a multi-line response; pure functions.

RFC 1939 §3: a multi-line response ends with a line holding a single ".", so every line of
the message that starts with "." gets one more "." in front (byte-stuffing). Nothing else
changes: the store hands out messages with CRLF line ends, and those bytes go out as they are.

:class:`DotStuffer` works on arbitrary chunks (a line may be split between two), so a
message is sent in bounded pieces and never copied whole.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

CHUNK: Final = 64 * 1024
TERMINATOR: Final = b".\r\n"


class DotStuffer:
    """Byte-stuff a message given in chunks; :meth:`finish` returns the end of the response."""

    def __init__(self) -> None:
        self._at_line_start = True
        self._empty = True

    def feed(self, chunk: bytes | memoryview) -> bytes:
        data = bytes(chunk)
        if not data:
            return b""
        # "\n." covers lines split between chunks, since the chunk before ended in "\n".
        stuffed = data.replace(b"\n.", b"\n..")
        if self._at_line_start and data[:1] == b".":
            stuffed = b"." + stuffed
        self._at_line_start = data[-1:] == b"\n"
        self._empty = False
        return stuffed

    def finish(self) -> bytes:
        """The closing ".": on a line of its own even when the message lacks a final CRLF."""
        if self._empty or self._at_line_start:
            return TERMINATOR
        return b"\r\n" + TERMINATOR


def stuffed_chunks(data: bytes, chunk: int = CHUNK) -> Iterator[bytes]:
    """``data`` as a complete multi-line response body, terminator included, in pieces."""
    stuffer = DotStuffer()
    view = memoryview(data)
    for start in range(0, len(data), chunk):
        yield stuffer.feed(view[start : start + chunk])
    yield stuffer.finish()


def top_part(message: bytes, lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header, the blank line after it and the first ``lines`` body lines.

    A message without a blank line is all header: TOP returns it whole.
    """
    if message.startswith(b"\r\n"):
        body_start = 2  # an empty header section
    else:
        end = message.find(b"\r\n\r\n")
        if end < 0:
            return message
        body_start = end + 4
    position = body_start
    for _ in range(lines):
        newline = message.find(b"\n", position)
        if newline < 0:
            return message  # fewer body lines than asked for: the whole message
        position = newline + 1
    return message[:position]
