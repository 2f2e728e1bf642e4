"""Modified UTF-7 for IMAP mailbox names (RFC 3501 §5.1.3), strict in both directions.

Printable US-ASCII (0x20-0x7e) except ``&`` represents itself; ``&`` is written ``&-``; every
other character is UTF-16BE, encoded in modified base64 (``,`` instead of ``/``, no padding)
between ``&`` and ``-``.  Decoding rejects everything the RFC forbids: raw non-printable or
8-bit octets, unterminated shifts, base64 that encodes printable ASCII, non-zero padding bits,
odd UTF-16 lengths and unpaired surrogates, so each name has exactly one encoding.
"""

from __future__ import annotations

import binascii
import re
from typing import Final


class Utf7Error(ValueError):
    """The input is not valid modified UTF-7."""


_DIRECT_RE: Final = re.compile(r"[\x20-\x25\x27-\x7e]+")
_TOKEN_RE: Final = re.compile(rb"([\x20-\x25\x27-\x7e]+)|&([A-Za-z0-9+,]*)-")
_ASCII_PRINTABLE_ONLY: Final = re.compile(rb"[\x20-\x25\x27-\x7e]*\Z")
_B64_CHARS: Final = re.compile(rb"[A-Za-z0-9+,]*\Z")


def encode(name: str) -> bytes:
    """Encode ``name`` to modified UTF-7 bytes (surrogates in ``name`` are refused)."""
    out: list[bytes] = []
    pos = 0
    while pos < len(name):
        m = _DIRECT_RE.match(name, pos)
        if m is not None:
            out.append(m.group().encode("ascii"))
            pos = m.end()
            continue
        if name[pos] == "&":
            out.append(b"&-")
            pos += 1
            continue
        end = pos
        while end < len(name) and not ("\x20" <= name[end] <= "\x7e"):
            end += 1
        try:
            utf16 = name[pos:end].encode("utf-16-be")
        except UnicodeEncodeError as e:
            raise Utf7Error("name contains a lone surrogate") from e
        b64 = binascii.b2a_base64(utf16, newline=False).rstrip(b"=").replace(b"/", b",")
        out.append(b"&" + b64 + b"-")
        pos = end
    return b"".join(out)


def decode(raw: bytes | str) -> str:
    """Decode modified UTF-7; raise :class:`Utf7Error` on any deviation from RFC 3501 §5.1.3."""
    data = raw.encode("latin-1") if isinstance(raw, str) else raw
    if _ASCII_PRINTABLE_ONLY.match(data):  # the common case: plain ASCII names
        return data.decode("ascii")
    parts: list[str] = []
    pos = 0
    previous_was_shift = False
    while pos < len(data):
        m = _TOKEN_RE.match(data, pos)
        if m is None:
            raise Utf7Error(_describe(data, pos))
        direct, b64 = m.group(1), m.group(2)
        if direct is not None:
            parts.append(direct.decode("ascii"))
            previous_was_shift = False
        elif not b64:
            parts.append("&")
            previous_was_shift = False
        else:
            if previous_was_shift:
                # Two adjacent shifts would give the same name a second spelling.
                raise Utf7Error("adjacent base64 sections must be merged")
            parts.append(_decode_b64(b64))
            previous_was_shift = True
        pos = m.end()
    return "".join(parts)


def _describe(data: bytes, pos: int) -> str:
    c = data[pos]
    if c == 0x26:
        return "unterminated or malformed '&' shift sequence"
    return f"octet 0x{c:02x} must be base64-encoded"


def _decode_b64(b64: bytes) -> str:
    if len(b64) % 4 == 1:
        raise Utf7Error("truncated base64 section")
    padded = b64.replace(b",", b"/") + b"=" * (-len(b64) % 4)
    utf16 = binascii.a2b_base64(padded)
    if len(utf16) % 2:
        raise Utf7Error("base64 section is not whole UTF-16 units")
    # The unused low bits of the last base64 character must be zero (canonical form).
    if binascii.b2a_base64(utf16, newline=False).rstrip(b"=") != padded.rstrip(b"="):
        raise Utf7Error("non-zero padding bits in base64 section")
    try:
        text = utf16.decode("utf-16-be")
    except UnicodeDecodeError as e:
        raise Utf7Error("unpaired UTF-16 surrogate") from e
    if any("\x20" <= ch <= "\x7e" for ch in text):
        raise Utf7Error("base64 section encodes printable ASCII")
    return text
