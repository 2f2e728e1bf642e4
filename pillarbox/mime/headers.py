"""Header blocks: locating them, splitting fields, RFC 2047 decoding, field filters.

All functions take CRLF-normalised bytes. Field values are decoded leniently: headers are
supposed to be ASCII, but real mail carries raw UTF-8 (RFC 6532) and worse; we decode UTF-8
and fall back to Latin-1 so nothing is ever lost to an exception.
"""

from __future__ import annotations

import base64
import binascii
import functools
import quopri
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Final

MAX_FIELDS: Final = 2000  # bound the work on a hostile header block

_FIELD_START_RE: Final = re.compile(rb"(?m)^([!-9;-~]+)[ \t]*:")
_ENCODED_WORD_RE: Final = re.compile(r"=\?([^?\s]+)\?([BbQq])\?([^?\s]*)\?=")
_ENCODED_GAP_RE: Final = re.compile(r"(\?=)[ \t\r\n]+(=\?)")


def split_header(data: bytes, start: int = 0, end: int | None = None) -> int:
    """Offset where the body starts: after the blank line ending the header at ``start``.

    A part without a blank line is all header (RFC 2046 §5.1.1 allows an empty body); a part
    starting with CRLF has an empty header.
    """
    end = len(data) if end is None else end
    if start + 2 <= end and data.startswith(b"\r\n", start):
        return start + 2
    pos = data.find(b"\r\n\r\n", start, end)
    return end if pos < 0 else pos + 4


def decode_text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _trim(block: bytes) -> bytes:
    """Drop the blank line that ends a header block, if it is there."""
    return block[:-2] if block.endswith(b"\r\n\r\n") or block == b"\r\n" else block


def iter_fields(block: bytes) -> Iterator[tuple[str, bytes]]:
    """(lower-case name, raw value with folding) for each field of a header block."""
    block = _trim(block)
    starts = [m for _, m in zip(range(MAX_FIELDS), _FIELD_START_RE.finditer(block), strict=False)]
    for i, m in enumerate(starts):
        value_end = starts[i + 1].start() if i + 1 < len(starts) else len(block)
        name = m.group(1).decode("ascii").lower()
        yield name, block[m.end() : value_end]


def iter_field_spans(block: bytes) -> Iterator[tuple[str, int, int]]:
    """(lower-case name, start, end) of each whole field including its CRLF."""
    block = _trim(block)
    starts = [m for _, m in zip(range(MAX_FIELDS), _FIELD_START_RE.finditer(block), strict=False)]
    for i, m in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(block)
        yield m.group(1).decode("ascii").lower(), m.start(), end


FieldList = list[tuple[str, bytes]]


def split_fields(block: bytes) -> FieldList:
    """All fields of a header block, split once (parse every header a single time)."""
    return list(iter_fields(block))


def unfold(value: bytes) -> str:
    """A field value unfolded (RFC 5322 §2.2.3) and stripped, as text."""
    return decode_text(value).replace("\r\n", "").strip()


def first_field(block: bytes, name: str) -> bytes | None:
    for field, value in iter_fields(block):
        if field == name:
            return value
    return None


def decode_words(text: str) -> str:
    """Decode RFC 2047 encoded words (whitespace between adjacent words dropped, §6.2)."""
    if "=?" not in text:
        return text
    text = _ENCODED_GAP_RE.sub(r"\1\2", text)
    return _ENCODED_WORD_RE.sub(_decode_word, text)


def _decode_word(m: re.Match[str]) -> str:
    charset = m.group(1).split("*", 1)[0]  # RFC 2231 §5 language suffix
    encoding, payload = m.group(2).upper(), m.group(3)
    try:
        if encoding == "B":
            raw = base64.b64decode(payload + "=" * (-len(payload) % 4))
        else:
            raw = quopri.decodestring(payload.replace("_", " ").encode("ascii"), header=True)
        return raw.decode(charset, "replace")
    except (LookupError, binascii.Error, ValueError, UnicodeEncodeError):
        return m.group(0)


def header_search_text(block: bytes | FieldList) -> str:
    """``name:value`` lines, unfolded, encoded words decoded, case-folded: for SEARCH.

    One line per field, in order; SEARCH FROM/SUBJECT/HEADER match substrings within one
    field's value (RFC 3501 §6.4.4), which the store does on this text without the file.
    """
    split = iter_fields(block) if isinstance(block, bytes) else block
    lines = [f"{name}:{decode_words(unfold(value))}" for name, value in split]
    return "\n".join(lines).casefold()


def filter_fields(block: bytes, names: Iterable[str], *, exclude: bool = False) -> bytes:
    """HEADER.FIELDS / HEADER.FIELDS.NOT (RFC 3501 §6.4.5): the chosen fields, as they are,
    followed by the blank line that ends a header."""
    wanted = frozenset(n.lower() for n in names)
    if not exclude and block.count(b"\n") < MAX_FIELDS:
        return _chosen_fields(block, wanted)
    out = [
        block[start:end]
        for name, start, end in iter_field_spans(block)
        if (name in wanted) != exclude
    ]
    return b"".join(out) + b"\r\n"


def field_filter(names: Iterable[str]) -> Callable[[bytes], bytes]:
    """:func:`filter_fields` for HEADER.FIELDS with the names worked out once: a FETCH
    of 50,000 messages filters 50,000 header blocks for the same few names."""
    wanted = frozenset(n.lower() for n in names)
    pattern = _wanted_re(wanted)

    def chosen(block: bytes) -> bytes:
        if block.count(b"\n") >= MAX_FIELDS:
            return filter_fields(block, wanted)
        return _chosen_spans(block, pattern)

    return chosen


def _chosen_fields(block: bytes, wanted: frozenset[str]) -> bytes:
    """HEADER.FIELDS of a block with fewer lines (so fewer fields) than MAX_FIELDS: the
    same spans as :func:`iter_field_spans` gives, found by a search for the wanted names
    only (``FETCH 1:* BODY.PEEK[HEADER.FIELDS (FROM SUBJECT DATE)]`` spent most of its time
    splitting every field of 50,000 header blocks). A field runs from its name to the next
    line that starts a field.

    The search runs over the block lower-cased (ASCII only, as names compare) behind a
    newline, so that a line start is a literal ``\n`` the regex engine skips to quickly;
    an offset in that text is the offset of the character after it in the block."""
    return _chosen_spans(block, _wanted_re(wanted))


def _chosen_spans(block: bytes, pattern: re.Pattern[bytes]) -> bytes:
    block = _trim(block)
    text = b"\n" + block.lower()
    out = []
    following_at = _NEXT_FIELD_RE.search
    for match in pattern.finditer(text):
        following = following_at(text, match.end())
        out.append(block[match.start() : len(block) if following is None else following.start()])
    return b"".join(out) + b"\r\n"


# A line that starts a field (``_FIELD_START_RE``), in the lower-cased text.
_NEXT_FIELD_RE: Final = re.compile(rb"\n[!-9;-~]+[ \t]*:")


@functools.lru_cache(maxsize=64)
def _wanted_re(wanted: frozenset[str]) -> re.Pattern[bytes]:
    """A line starting a field whose name is one of ``wanted`` (lower-case)."""
    names = b"|".join(re.escape(n.encode("ascii", "replace")) for n in sorted(wanted))
    return re.compile(rb"\n(?:" + (names or rb"(?!)") + rb")[ \t]*:")
