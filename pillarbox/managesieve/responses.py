"""ManageSieve server output (RFC 5804 §4): strings, capability lines and responses; pure.

A string goes out quoted when it can (short, no CR, LF or NUL; ``"`` and ``\\`` escaped),
else as a server literal ``{n}`` CRLF octets (``literal-s2c``), which carries anything.
"""

from __future__ import annotations

from typing import Final, Literal

from pillarbox.managesieve.parser import MAX_QUOTED

CRLF: Final = b"\r\n"
Kind = Literal["OK", "NO", "BYE"]


def string(text: str | bytes) -> bytes:
    """``text`` as a ManageSieve string: quoted if it may be, else a literal."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    if len(data) <= MAX_QUOTED and not any(c in data for c in b"\r\n\0"):
        return b'"' + data.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return literal(data)


def literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


def capability(name: str, value: str | None = None) -> bytes:
    """One capability line: ``"NAME"`` or ``"NAME" "value"`` (RFC 5804 §1.7)."""
    line = string(name)
    if value is not None:
        line += b" " + string(value)
    return line + CRLF


def response(kind: Kind, code: str = "", text: str = "") -> bytes:
    """``OK``/``NO``/``BYE`` [SP "(" resp-code ")"] [SP string] CRLF (RFC 5804 §4).

    ``code`` is the response code as it goes out, arguments included (``QUOTA/MAXSIZE``,
    ``TAG "abc"``); the text, human-readable, is a string."""
    line = kind.encode("ascii")
    if code:
        line += b" (" + code.encode("utf-8") + b")"
    if text:
        line += b" " + string(text)
    return line + CRLF
