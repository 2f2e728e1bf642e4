"""Parsing what an IMAP server answers, as :mod:`imaplib` hands it over (RFC 3501 §7).

imaplib returns untagged data as a list in which a response carrying a literal is a tuple
``(text before the literal, literal bytes)`` followed by the rest of the line as bytes.
These functions turn LIST, FETCH and NAMESPACE answers into plain values.
"""

from __future__ import annotations

import base64
import calendar
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

ImapData = Sequence[bytes | tuple[bytes, bytes] | None]

_LIST_RE: Final = re.compile(
    rb'\((?P<attrs>[^)]*)\) (?P<delim>NIL|"(?:\\.|[^"\\])*") ?(?P<name>.*)'
)
_UID_RE: Final = re.compile(rb"\bUID (\d+)")
_FLAGS_RE: Final = re.compile(rb"\bFLAGS \(([^)]*)\)")
_DATE_RE: Final = re.compile(
    rb'\bINTERNALDATE "\s?(\d{1,2})-(\w{3})-(\d{4}) (\d{2}):(\d{2}):(\d{2}) ([+-])(\d{2})(\d{2})"'
)
_SIZE_RE: Final = re.compile(rb"\bRFC822\.SIZE (\d+)")
_MONTHS: Final = {m.encode(): i for i, m in enumerate(calendar.month_abbr) if m}


@dataclass(frozen=True, slots=True)
class RemoteFolder:
    name: str  # decoded from modified UTF-7
    raw: bytes  # the name as the server spells it (for SELECT)
    delimiter: str | None
    attributes: frozenset[str]  # lower-case, e.g. "\\sent", "\\noselect"


@dataclass(frozen=True, slots=True)
class FetchedMessage:
    uid: int
    flags: tuple[str, ...]
    internal_date: float | None
    data: bytes | None


def _unquote(text: bytes) -> bytes:
    if text.startswith(b'"') and text.endswith(b'"') and len(text) >= 2:
        return re.sub(rb"\\(.)", rb"\1", text[1:-1])
    return text


def decode_utf7(raw: bytes) -> str:
    """Modified UTF-7 mailbox names (RFC 3501 §5.1.3) to Unicode; bad input left as is."""

    def shift(found: re.Match[str]) -> str:
        b64 = found.group(1)
        if not b64:
            return "&"
        data = b64.replace(",", "/")
        try:
            return base64.b64decode(data + "=" * (-len(data) % 4)).decode("utf-16-be")
        except (ValueError, UnicodeDecodeError):
            return found.group(0)

    return re.sub(r"&([A-Za-z0-9+,]*)-", shift, raw.decode("ascii", "replace"))


def parse_list(data: ImapData) -> list[RemoteFolder]:
    """LIST responses (``attributes delimiter name``); a literal name arrives as a tuple."""
    folders: list[RemoteFolder] = []
    for item in data:
        if item is None:
            continue
        if isinstance(item, tuple):
            head, raw = item[0], item[1]
            found = _LIST_RE.match(head)
        else:
            found = _LIST_RE.match(item)
            raw = _unquote(found.group("name").strip()) if found else b""
        if not found:
            continue
        delim_text = found.group("delim")
        delimiter = None if delim_text == b"NIL" else _unquote(delim_text).decode("ascii")
        attributes = frozenset(a.lower() for a in found.group("attrs").decode().split())
        folders.append(RemoteFolder(decode_utf7(raw), raw, delimiter, attributes))
    return folders


def parse_namespace_prefix(data: ImapData) -> str:
    """The personal namespace prefix from NAMESPACE (RFC 2342), e.g. ``INBOX.``; or ""."""
    for item in data:
        text = item[0] if isinstance(item, tuple) else item
        if text:
            found = re.match(rb'\(\("((?:\\.|[^"\\])*)"', text)
            if found:
                return decode_utf7(_unquote(b'"' + found.group(1) + b'"'))
    return ""


def parse_internal_date(meta: bytes) -> float | None:
    found = _DATE_RE.search(meta)
    if not found:
        return None
    day, month, year, hh, mm, ss, sign, zh, zm = found.groups()
    if month not in _MONTHS:
        return None
    utc = calendar.timegm((int(year), _MONTHS[month], int(day), int(hh), int(mm), int(ss)))
    offset = (int(zh) * 60 + int(zm)) * 60
    return float(utc - offset if sign == b"+" else utc + offset)


def parse_flags(meta: bytes) -> tuple[str, ...]:
    """FLAGS of a FETCH response; ``\\Recent`` is session state, never copied."""
    found = _FLAGS_RE.search(meta)
    if not found:
        return ()
    return tuple(
        f for f in found.group(1).decode("utf-8", "replace").split() if f.lower() != "\\recent"
    )


def parse_fetch(data: ImapData) -> list[FetchedMessage]:
    """FETCH responses with UID, FLAGS, INTERNALDATE and BODY[] (any order of items: a
    server may send FLAGS after the literal, RFC 3501 §7.4.2 fixes no order)."""
    messages: list[FetchedMessage] = []
    meta = b""
    body: bytes | None = None

    def finish() -> None:
        uid = _UID_RE.search(meta)
        if uid:
            date = parse_internal_date(meta)
            messages.append(FetchedMessage(int(uid.group(1)), parse_flags(meta), date, body))

    for item in data:
        if isinstance(item, tuple):
            if meta and re.match(rb"\d+ \(", meta):
                finish()
            meta, body = item[0], item[1]
        elif item:
            if re.match(rb"\d+ \(", item):
                if meta:
                    finish()
                meta, body = item, None
            else:
                meta += b" " + item
    if meta:
        finish()
    return messages


def parse_sizes(data: ImapData) -> dict[int, int]:
    """UID -> RFC822.SIZE from ``UID FETCH ... (RFC822.SIZE)``."""
    sizes: dict[int, int] = {}
    for item in data:
        text = item[0] if isinstance(item, tuple) else item
        if not text:
            continue
        uid, size = _UID_RE.search(text), _SIZE_RE.search(text)
        if uid and size:
            sizes[int(uid.group(1))] = int(size.group(1))
    return sizes


def uid_set(uids: Iterable[int]) -> str:
    """A compact sequence set (RFC 3501 §9 sequence-set): ``1:4,7,9:10``."""
    ordered = sorted(set(uids))
    parts: list[str] = []
    i = 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        parts.append(str(ordered[i]) if i == j else f"{ordered[i]}:{ordered[j]}")
        i = j + 1
    return ",".join(parts)


def quote(name: bytes) -> bytes:
    """An IMAP quoted string (RFC 3501 §4.3) for a mailbox name."""
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
