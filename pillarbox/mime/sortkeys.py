"""The sort keys of a message (RFC 5256 §2, RFC 5957 §3), from its header block.

One definition for every place that orders messages: the mail store computes them when it
parses a message and keeps them as indexed columns (``SORT`` is then one ``ORDER BY``), and
the IMAP layer computes them itself for a store without such columns and for THREAD. Both
must give the same order, so both call :func:`sort_keys` (or its parts) here.

Text keys are upper-cased (``i;unicode-casemap`` approximated) and free of lone surrogates
(an undecodable 8-bit header leaves them): such a string cannot be stored as UTF-8, and the
code point order of Python strings is then the byte order of SQLite's BINARY collation.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.utils
import functools
import re
from email.parser import BytesHeaderParser
from typing import Final, NamedTuple

# The header fields the keys are computed from (lower-case).
SORT_FIELDS: Final = frozenset(("date", "subject", "from", "to", "cc"))


class SortKeys(NamedTuple):
    """What SORT compares of one message, besides ARRIVAL and SIZE (the message's row)."""

    date: int | None  # sent date in UTC epoch seconds; None: no (valid) Date: (§2.2)
    subject: str  # base subject (§2.1)
    is_reply: bool  # the subject had Re:/Fwd: or a (fwd) trailer (§2.1 steps 2, 4, 6)
    from_: str  # local part of the first From: mailbox (§3 "FROM")
    to: str
    cc: str
    display_from: str  # display name of the first From: address, else its addr-spec (RFC 5957)
    display_to: str


def sort_keys(header: bytes) -> SortKeys:
    """The keys of the message whose header block (CRLF lines, up to the empty line) is
    ``header``."""
    fields = header_fields(header, SORT_FIELDS)
    get = fields.get
    subject, reply = base_subject(get("subject") or "")
    from_local, from_display = first_address(get("from"))
    to_local, to_display = first_address(get("to"))
    return SortKeys(
        date=sent_date(get("date")),
        subject=subject,
        is_reply=reply,
        from_=from_local,
        to=to_local,
        cc=first_address(get("cc"))[0],
        display_from=from_display,
        display_to=to_display,
    )


# --- base subject (RFC 5256 §2.1) ---------------------------------------------------------------
_BLOB: Final = r"\[[^\[\]]*\]"
_TRAILER_RE: Final = re.compile(r"(\s*\(fwd\))$", re.IGNORECASE)
_LEADER_RE: Final = re.compile(rf"^(?:{_BLOB}\s*)*(?:re|fwd?)\s*(?:{_BLOB})?:\s*", re.IGNORECASE)
_BLOB_RE: Final = re.compile(rf"^{_BLOB}\s*")
_FWD_RE: Final = re.compile(r"^\[fwd:(.*)\]$", re.IGNORECASE)


@functools.lru_cache(maxsize=8192)
def base_subject(raw: str) -> tuple[str, bool]:
    """(base subject, whether it looked like a reply/forward) per RFC 5256 §2.1."""
    text = " ".join(_decode(raw).split())  # step 1: decode, collapse whitespace
    reply = False
    while True:
        while True:  # step 2: remove (fwd) trailers and trailing whitespace
            m = _TRAILER_RE.search(text)
            if not m:
                break
            text, reply = text[: m.start()].rstrip(), True
        text = text.rstrip()
        while True:  # steps 3-5: remove subj-leader and subj-blob repeatedly
            m = _LEADER_RE.match(text)
            if m:
                text, reply = text[m.end() :], True
                continue
            m = _BLOB_RE.match(text)
            if m and text[m.end() :]:  # a blob is removed only if something remains
                text = text[m.end() :]
                continue
            break
        m = _FWD_RE.match(text)  # step 6: [fwd: ...] wrapper
        if m:
            text, reply = m.group(1).strip(), True
            continue
        if not _TRAILER_RE.search(text):
            break
    return storable(text.upper()), reply  # i;unicode-casemap is approximated by upper-casing


def _decode(raw: str) -> str:
    if "=?" not in raw:
        return raw  # no RFC 2047 encoded word: decoding would return it unchanged
    try:
        return str(email.header.make_header(email.header.decode_header(raw)))
    except (ValueError, LookupError, UnicodeError):
        return raw


def storable(text: str) -> str:
    """``text`` with lone surrogates (undecodable bytes of an 8-bit header) replaced."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


# --- addresses (RFC 5256 §3 "FROM", RFC 5957 §3 DISPLAYFROM) -------------------------------------
@functools.lru_cache(maxsize=8192)
def first_address(raw: str | None) -> tuple[str, str]:
    """(mailbox local-part, display name or addr-spec) of the first address, upper-cased."""
    if not raw:
        return "", ""
    pairs = email.utils.getaddresses([_decode(raw)])
    if not pairs:
        return "", ""
    name, addr = pairs[0]
    local = addr.split("@", 1)[0]
    return storable(local.upper()), storable((name or addr).upper())


# --- sent date (RFC 5256 §2.2) --------------------------------------------------------------------
def sent_date(raw: str | None) -> int | None:
    """The Date: field as UTC epoch seconds (a zone-less date is taken as UTC), or None
    when it is missing or unparseable: the caller falls back to INTERNALDATE (§2.2)."""
    if not raw:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if parsed is None:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    try:
        return int(parsed.timestamp())
    except (OverflowError, OSError, ValueError):
        return None


# --- cutting fields out of a header block -------------------------------------------------------
_HEADER_LINE_RE: Final = re.compile(r"([\041-\071\073-\176]+):")


def header_fields(header: bytes, names: frozenset[str]) -> dict[str, str]:
    """The first value of each header field in ``names`` (lower-case), as the ``email``
    package's compat32 parser gives it: leading blanks after the colon dropped,
    continuation lines kept with their line breaks, the final CRLF stripped.

    Done by hand for a plain-ASCII header block (an 8-bit one goes to the parser, whose
    ``get`` then has its own rules for undecodable bytes)."""
    if not names:
        return {}
    if not header.isascii() or header.startswith(b"From "):
        return _parsed_fields(header, names)
    found: dict[str, list[str]] = {}  # the first occurrence's lines, per wanted field
    current: list[str] | None = None
    for line in header.decode("ascii").split("\r\n"):
        if line[:1] in (" ", "\t"):
            if current is not None:
                current.append(line)
            continue
        if not line:
            break  # the empty line that ends the header
        match = _HEADER_LINE_RE.match(line)
        if match is None:
            return _parsed_fields(header, names)  # not a field line: the parser's recovery
        name = match.group(1).lower()
        current = None
        if name in names and name not in found:
            current = found[name] = [line[match.end() :].lstrip(" \t")]
    return {name: "\r\n".join(lines).rstrip("\r\n") for name, lines in found.items()}


def _parsed_fields(header: bytes, names: frozenset[str]) -> dict[str, str]:
    parsed = BytesHeaderParser().parsebytes(header)
    out = {}
    for name in names:
        value = parsed.get(name)
        if value is not None:
            out[name] = str(value)
    return out
