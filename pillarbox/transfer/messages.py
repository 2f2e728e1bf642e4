"""What foreign files say about a message: is it one at all, and which flags it carries.

mbox has no place for flags outside the message, so mail programs keep them in header
fields: ``Status`` / ``X-Status`` (mutt, Pine, Dovecot's mbox), ``X-Keywords`` (Dovecot,
mutt), ``X-Mozilla-Status`` / ``X-Mozilla-Keys`` (Thunderbird). Importing turns them into
IMAP flags and removes them from the stored message (as Dovecot's mbox driver hides them),
so an export and a re-import give back the same bytes.
"""

from __future__ import annotations

import re
from typing import Final

# Thunderbird's nsMsgMessageFlags (mailnews/base/public/nsMsgMessageFlags.idl).
MOZ_READ: Final = 0x0001
MOZ_REPLIED: Final = 0x0002
MOZ_MARKED: Final = 0x0004
MOZ_EXPUNGED: Final = 0x0008

FLAG_FIELDS: Final = (
    "status",
    "x-status",
    "x-keywords",
    "x-mozilla-status",
    "x-mozilla-status2",
    "x-mozilla-keys",
    "x-uid",
    "x-imap",
    "x-imapbase",
)
_FIELD_RE: Final = re.compile(rb"[!-9;-~]+:")  # RFC 5322 §3.6.8 field name, then ":"
_KEYWORD_RE: Final = re.compile(r'[^(){ %*"\\\]\x00-\x20\x7f-\uffff]+\Z')  # RFC 3501 atom
_BLANK_RE: Final = re.compile(rb"\r?\n\r?\n")
_X_STATUS: Final = {"A": "\\Answered", "F": "\\Flagged", "T": "\\Draft", "D": "\\Deleted"}


def header_end(data: bytes) -> int:
    """Offset just past the blank line that ends the header (-1 if there is none)."""
    if data.startswith(b"\n"):
        return 1
    if data.startswith(b"\r\n"):
        return 2
    found = _BLANK_RE.search(data)
    return found.end() if found else -1


def not_a_message(data: bytes) -> str | None:
    """Why ``data`` cannot be an RFC 5322 message, or None if it looks like one."""
    if not data.strip():
        return "empty file"
    if b"\0" in data[:4096]:
        return "binary data (NUL bytes), not a message"
    first = data.split(b"\n", 1)[0]
    if not _FIELD_RE.match(first) and not first.startswith(b"From "):
        return "does not start with a header field"
    if header_end(data) < 0 and b"\n" in data.rstrip(b"\r\n"):
        return "no end of header (truncated?)"
    return None


def _fields(head: bytes) -> list[tuple[str, bytes, bytes]]:
    """(lower-case name, value, whole raw field with folds) of a header block."""
    out: list[tuple[str, bytes, bytes]] = []
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and out:
            name, value, raw = out[-1]
            out[-1] = (name, value + line.strip(), raw + line)
            continue
        field, sep, value = line.partition(b":")
        if sep:
            out.append((field.strip().decode("latin-1").lower(), value.strip(), line))
        else:
            out.append(("", b"", line))
    return out


def flags_from_fields(data: bytes) -> tuple[tuple[str, ...], bytes]:
    """(IMAP flags, message without the flag fields) from an mbox message's header."""
    end = header_end(data)
    if end < 0:
        return (), data
    head, body = data[:end], data[end:]
    flags: list[str] = []
    kept: list[bytes] = []
    for name, value, raw in _fields(head):
        if name not in FLAG_FIELDS:
            kept.append(raw)
            continue
        text = value.decode("latin-1")
        if name == "status" and "R" in text:
            flags.append("\\Seen")
        elif name == "x-status":
            flags += [flag for letter, flag in _X_STATUS.items() if letter in text]
        elif name == "x-mozilla-status":
            flags += _mozilla_flags(text)
        elif name in ("x-keywords", "x-mozilla-keys"):
            flags += [k for k in re.split(r"[\s,]+", text) if _KEYWORD_RE.match(k)]
    return tuple(dict.fromkeys(flags)), b"".join(kept) + body


def _mozilla_flags(text: str) -> list[str]:
    try:
        bits = int(text.strip(), 16)
    except ValueError:
        return []
    flags = []
    if bits & MOZ_READ:
        flags.append("\\Seen")
    if bits & MOZ_REPLIED:
        flags.append("\\Answered")
    if bits & MOZ_MARKED:
        flags.append("\\Flagged")
    if bits & MOZ_EXPUNGED:
        flags.append("\\Deleted")  # deleted in Thunderbird, not yet compacted away
    return flags


def flag_fields(flags: tuple[str, ...], newline: bytes = b"\n") -> bytes:
    """The header fields that carry ``flags`` in an mbox that mutt, Thunderbird and Dovecot
    read: Status/X-Status, X-Keywords, and Thunderbird's X-Mozilla-Status/-Keys."""
    have = {f.lower() for f in flags}
    keywords = [f for f in flags if not f.startswith("\\")]
    status = "RO" if "\\seen" in have else "O"
    x_status = "".join(letter for letter, flag in _X_STATUS.items() if flag.lower() in have)
    moz = 0
    for flag, bit in (("\\seen", MOZ_READ), ("\\answered", MOZ_REPLIED),
                      ("\\flagged", MOZ_MARKED), ("\\deleted", MOZ_EXPUNGED)):  # fmt: skip
        if flag in have:
            moz |= bit
    lines = [f"Status: {status}", f"X-Mozilla-Status: {moz:04x}", "X-Mozilla-Status2: 00000000"]
    if x_status:
        lines.append(f"X-Status: {x_status}")
    if keywords:
        lines.append(f"X-Keywords: {' '.join(keywords)}")
        lines.append(f"X-Mozilla-Keys: {' '.join(keywords)}")
    return b"".join(line.encode() + newline for line in lines)


def insert_fields(data: bytes, fields: bytes) -> bytes:
    """``data`` with ``fields`` added at the end of its header (before the blank line)."""
    if data.startswith((b"\n", b"\r\n")):
        return fields + data
    found = _BLANK_RE.search(data)
    if found is None:  # header only: end it
        return data.rstrip(b"\r\n") + b"\n" + fields + b"\n"
    cut = found.start() + (2 if data[found.start() : found.start() + 2] == b"\r\n" else 1)
    return data[:cut] + fields + data[cut:]
