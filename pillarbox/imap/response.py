"""IMAP server responses built from typed tokens into safe bytes (RFC 3501 §7, §9).

Nothing reaches the wire through string formatting: every value is a token that encodes itself
according to the grammar.  A :class:`String` picks a quoted string when the value is short and
safe and a literal otherwise, so a header value with CR/LF, quotes or 8-bit data can never
break the response framing.  Atoms and flags are validated and raise ``ValueError`` when they
are not valid atoms (a programming error, not client input).  Plain Python values are accepted
too: ``int`` is a number, ``None`` is NIL, ``str``/``bytes`` are strings, tuples/lists are
parenthesised lists.

``utf8`` (after ENABLE UTF8=ACCEPT, RFC 6855) allows 8-bit UTF-8 in quoted strings and sends
mailbox names as UTF-8 instead of modified UTF-7.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from pillarbox.imap import utf7
from pillarbox.imap.fetchatts import FetchAtt, Simple, response_name
from pillarbox.imap.grammar import ParseError, SequenceSet

MAX_QUOTED: Final = 1024  # longer strings go as literals; keeps lines short and cheap to scan
STATUSES: Final = frozenset({"OK", "NO", "BAD", "PREAUTH", "BYE"})

_ATOM_RE: Final = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+\Z')
_FLAG_RE: Final = re.compile(rb'(?:\\?[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+|\\\*)\Z')
_TAG_RE: Final = re.compile(rb'[^(){ %*"\\+\x00-\x1f\x7f-\xff]+\Z')
_QUOTABLE_ASCII: Final = re.compile(rb"[\x01-\x09\x0b\x0c\x0e-\x7f]*\Z")
_QUOTABLE_UTF8: Final = re.compile(rb"[^\x00\r\n]*\Z")
_TEXT_UNSAFE: Final = re.compile(r"[\x00-\x1f\x7f]")
_CODE_NAME_RE: Final = re.compile(r"[A-Z0-9.\-]+\Z")
_MONTHS: Final = [
    "Jan",
    "Feb",
    "Mar",
    "Apr",
    "May",
    "Jun",
    "Jul",
    "Aug",
    "Sep",
    "Oct",
    "Nov",
    "Dec",
]


# --- tokens ----------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Atom:
    """An atom (e.g. ``EXISTS``, ``UIDNEXT``, a capability name)."""

    value: str


@dataclass(frozen=True, slots=True)
class Flag:
    """A flag: ``\\Seen``, ``\\*`` or a keyword."""

    value: str


@dataclass(frozen=True, slots=True)
class Flags:
    """A parenthesised flag list; encodings of recurring sets are cached (FETCH FLAGS)."""

    flags: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class String:
    """A string, sent quoted when short and safe, as a literal otherwise."""

    value: bytes | str


@dataclass(frozen=True, slots=True)
class Literal:
    """Always a literal; ``binary`` makes it a literal8 ``~{N}`` (RFC 3516 BINARY)."""

    value: bytes
    binary: bool = False


@dataclass(frozen=True, slots=True)
class Nil:
    pass


NIL: Final = Nil()


@dataclass(frozen=True, slots=True)
class Number:
    value: int


@dataclass(frozen=True, slots=True)
class List:
    """A parenthesised list of tokens or plain values."""

    items: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Multipart:
    """A multipart BODY/BODYSTRUCTURE: ``(`` the parts with no space between them, then
    ``SP subtype [SP extension ...]`` ``)`` (RFC 3501 §9 body-type-mpart)."""

    parts: tuple[object, ...]
    rest: tuple[object, ...]


@dataclass(frozen=True, slots=True)
class Mailbox:
    """A mailbox name: modified UTF-7 (UTF-8 for UTF8=ACCEPT clients), sent as a string."""

    name: str


@dataclass(frozen=True, slots=True)
class DateTime:
    """``date-time`` as used by INTERNALDATE: ``"17-Jul-1996 02:44:25 -0700"``."""

    value: dt.datetime


@dataclass(frozen=True, slots=True)
class Seq:
    """A sequence set / uid set (COPYUID, APPENDUID, ESEARCH ALL, VANISHED)."""

    value: SequenceSet


@dataclass(frozen=True, slots=True)
class FetchName:
    """The name of a FETCH response item, echoing the request (``BODY[HEADER.FIELDS (A)]<0>``)."""

    att: FetchAtt


@dataclass(frozen=True, slots=True)
class Code:
    """A response code: ``[name args...]``, e.g. ``Code("UIDVALIDITY", 42)``."""

    name: str
    args: tuple[object, ...] = ()

    def __init__(self, name: str, *args: object) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "args", args)


# --- encoding --------------------------------------------------------------------------------
Out = bytearray


def encode(value: object, *, utf8: bool = False) -> bytes:
    """Encode one token or plain value."""
    out = bytearray()
    _put(out, value, utf8)
    return bytes(out)


def _put(out: Out, value: object, utf8: bool) -> None:
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        raise TypeError(f"cannot encode {type(value).__name__} in an IMAP response")
    encoder(out, value, utf8)


def _put_atom(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Atom)
    raw = value.value.encode("ascii", "replace")
    if not _ATOM_RE.match(raw):
        raise ValueError(f"not an atom: {value.value!r}")
    out += raw


def _put_flag(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Flag)
    raw = value.value.encode("ascii", "replace")
    if not _FLAG_RE.match(raw):
        raise ValueError(f"not a flag: {value.value!r}")
    out += raw


def put_string(out: Out, value: bytes | str, utf8: bool) -> None:
    raw = value.encode("utf-8") if isinstance(value, str) else value
    if b"\x00" in raw:
        # A literal may not carry NUL (RFC 3501 §4.3); like Dovecot, send 0x80 instead.
        # Clients that need the exact octets use BINARY, whose literal8 allows NUL.
        raw = raw.replace(b"\x00", b"\x80")
    quotable = _QUOTABLE_UTF8 if utf8 else _QUOTABLE_ASCII
    if len(raw) <= MAX_QUOTED and quotable.match(raw):
        out += b'"'
        out += (
            raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
            if b"\\" in raw or b'"' in raw
            else raw
        )
        out += b'"'
    else:
        out += b"{%d}\r\n" % len(raw)
        out += raw


_flag_lists: dict[tuple[str, ...], bytes] = {}


def _put_flags(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Flags)
    raw = _flag_lists.get(value.flags)
    if raw is None:
        inner = bytearray()
        for i, flag in enumerate(value.flags):
            if i:
                inner += b" "
            _put_flag(inner, Flag(flag), utf8)
        raw = b"(" + bytes(inner) + b")"
        if len(_flag_lists) > 4096:
            _flag_lists.clear()
        _flag_lists[value.flags] = raw
    out += raw


def _put_string(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, String)
    put_string(out, value.value, utf8)


def _put_plain_string(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, str | bytes)
    put_string(out, value, utf8)


def _put_literal(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Literal)
    raw = value.value
    if not value.binary and b"\x00" in raw:
        raw = raw.replace(b"\x00", b"\x80")  # see put_string
    out += literal_prefix(len(raw), binary=value.binary)
    out += raw


def literal_prefix(size: int, *, binary: bool = False) -> bytes:
    """``{N}\\r\\n`` / ``~{N}\\r\\n``: for a session that streams a large literal itself."""
    return (b"~{%d}\r\n" if binary else b"{%d}\r\n") % size


def _put_nil(out: Out, value: object, utf8: bool) -> None:
    out += b"NIL"


def _put_number(out: Out, value: object, utf8: bool) -> None:
    n = value.value if isinstance(value, Number) else value
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"not a number: {n!r}")
    out += b"%d" % n


def _put_list(out: Out, value: object, utf8: bool) -> None:
    items = value.items if isinstance(value, List) else value
    assert isinstance(items, tuple | list)
    out += b"("
    first = True
    for item in items:
        if not first:
            out += b" "
        first = False
        _put(out, item, utf8)
    out += b")"


def _put_multipart(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Multipart)
    if not value.parts or not value.rest:
        raise ValueError("a multipart body needs parts and a subtype")
    out += b"("
    for part in value.parts:
        _put(out, part, utf8)
    for item in value.rest:
        out += b" "
        _put(out, item, utf8)
    out += b")"


def _put_mailbox(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Mailbox)
    put_string(out, value.name.encode("utf-8") if utf8 else utf7.encode(value.name), utf8)


def _put_datetime(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, DateTime)
    out += format_datetime(value.value)


def format_datetime(value: dt.datetime) -> bytes:
    """Quoted ``date-time`` (RFC 3501 §9); naive datetimes are taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    offset = value.utcoffset() or dt.timedelta()
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    text = (
        f'"{value.day:2d}-{_MONTHS[value.month - 1]}-{value.year:04d} '
        f"{value.hour:02d}:{value.minute:02d}:{value.second:02d} "
        f'{sign}{minutes // 60:02d}{minutes % 60:02d}"'
    )
    return text.encode("ascii")


def _put_seq(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Seq)
    if value.value.saved or not value.value.ranges:
        raise ValueError("cannot send an empty or saved sequence set")
    out += value.value.to_bytes()


def _put_fetch_name(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, FetchName)
    out += response_name(value.att)


def _put_code(out: Out, value: object, utf8: bool) -> None:
    assert isinstance(value, Code)
    if not _CODE_NAME_RE.match(value.name):
        raise ValueError(f"not a response code: {value.name!r}")
    out += b"["
    out += value.name.encode("ascii")
    for arg in value.args:
        out += b" "
        _put(out, arg, utf8)
    out += b"]"


_ENCODERS: Final[dict[type, Callable[[Out, object, bool], None]]] = {
    Atom: _put_atom,
    Flag: _put_flag,
    Flags: _put_flags,
    String: _put_string,
    str: _put_plain_string,
    bytes: _put_plain_string,
    Literal: _put_literal,
    Nil: _put_nil,
    type(None): _put_nil,
    Number: _put_number,
    int: _put_number,
    List: _put_list,
    tuple: _put_list,
    list: _put_list,
    Mailbox: _put_mailbox,
    Multipart: _put_multipart,
    DateTime: _put_datetime,
    Seq: _put_seq,
    FetchName: _put_fetch_name,
    Code: _put_code,
}


def text(value: str) -> bytes:
    """Human-readable resp-text: control characters become spaces, non-ASCII ``?``."""
    cleaned = _TEXT_UNSAFE.sub(" ", value).encode("ascii", "replace")
    # A text starting with "[" would be read as a response code (RFC 3501 §9 resp-text).
    return b" " + cleaned if cleaned.startswith(b"[") else cleaned


# --- whole responses -------------------------------------------------------------------------
def untagged(*items: object, utf8: bool = False) -> bytes:
    """``* item item ...\\r\\n``, e.g. ``untagged(3, Atom("EXISTS"))``."""
    out = bytearray(b"*")
    for item in items:
        out += b" "
        _put(out, item, utf8)
    out += b"\r\n"
    return bytes(out)


def _status_line(start: bytes, status: str, message: str, code: Code | None) -> bytes:
    if status not in STATUSES:
        raise ValueError(f"not a status: {status!r}")
    out = bytearray(start)
    out += b" "
    out += status.encode("ascii")
    if code is not None:
        out += b" "
        _put_code(out, code, False)
    out += b" "
    out += text(message) or b"done"
    out += b"\r\n"
    return bytes(out)


def tagged(tag: str | None, status: str, message: str, code: Code | None = None) -> bytes:
    """``tag OK [code] text\\r\\n``; a None tag gives an untagged status (``* BAD ...``)."""
    if tag is None:
        return _status_line(b"*", status, message, code)
    raw = tag.encode("ascii", "replace")
    if not _TAG_RE.match(raw):
        raise ValueError(f"not a tag: {tag!r}")
    return _status_line(raw, status, message, code)


def parse_error(error: ParseError) -> bytes:
    """The answer to a :class:`ParseError`: ``tag BAD [code] reason`` (``*`` without a tag)."""
    code = None
    if error.code is not None:
        name, _, arg = error.code.partition(" ")
        code = Code(name, *_code_args(arg))
    tag = error.tag if error.tag is not None and _TAG_RE.match(error.tag.encode()) else None
    return tagged(tag, error.status, error.reason, code)


def _code_args(arg: str) -> tuple[object, ...]:
    # Only the codes our parser raises: TOOBIG and "BADCHARSET (UTF-8 US-ASCII)".
    if arg.startswith("(") and arg.endswith(")"):
        return (List(tuple(Atom(a) for a in arg[1:-1].split())),)
    return ()


def untagged_status(status: str, message: str, code: Code | None = None) -> bytes:
    """``* OK [UIDVALIDITY 3857529045] UIDs valid\\r\\n``"""
    return _status_line(b"*", status, message, code)


def continuation(message: str = "go ahead") -> bytes:
    """``+ text\\r\\n`` (command continuation request, RFC 3501 §7.5)."""
    return b"+ " + text(message) + b"\r\n"


def continuation_data(data: bytes) -> bytes:
    """``+ base64\\r\\n`` for an AUTHENTICATE challenge (RFC 3501 §6.2.2)."""
    import base64

    return b"+ " + base64.b64encode(data) + b"\r\n"


def fetch(seq: int, items: Iterable[tuple[FetchAtt | str, object]], *, utf8: bool = False) -> bytes:
    """``* seq FETCH (name value ...)``.

    Names are fetch attributes (echoed as the client asked, RFC 3501 §7.4.2) or plain item
    names such as ``"UID"``; values are tokens or plain values.
    """
    out = bytearray(b"* %d FETCH (" % seq)
    first = True
    for name, value in items:
        if not first:
            out += b" "
        first = False
        raw = _item_names.get(name)
        if raw is None:
            raw = _item_name(name)
        out += raw
        _put(out, value, utf8)
    out += b")\r\n"
    return bytes(out)


# FETCH item names repeat for every message of a response: cache their encoded form.
_item_names: dict[FetchAtt | str, bytes] = {}


def _item_name(name: FetchAtt | str) -> bytes:
    if isinstance(name, str):
        raw = name.encode("ascii", "replace")
        if not _FETCH_ITEM_NAME_RE.match(raw):
            raise ValueError(f"not a fetch item name: {name!r}")
    else:
        raw = response_name(name)
    if len(_item_names) > 1024:
        _item_names.clear()
    _item_names[name] = raw + b" "
    return raw + b" "


_FETCH_ITEM_NAME_RE: Final = re.compile(rb"[A-Z0-9.]+\Z")


def flag_list(flags: Iterable[str]) -> Flags:
    """``(\\Seen $Forwarded)`` as a token."""
    return Flags(tuple(flags))


def capability(capabilities: Iterable[str]) -> bytes:
    return untagged(Atom("CAPABILITY"), *(Atom(c) for c in capabilities))


def list_response(
    kind: str, attributes: Iterable[str], separator: str | None, name: str, *, utf8: bool = False
) -> bytes:
    """``* LIST (\\HasNoChildren) "/" "INBOX"`` (kind is ``LIST`` or ``LSUB``)."""
    sep: object = None if separator is None else String(separator)
    return untagged(Atom(kind), flag_list(attributes), sep, Mailbox(name), utf8=utf8)


def status_response(name: str, items: Iterable[tuple[str, int]], *, utf8: bool = False) -> bytes:
    """``* STATUS "name" (MESSAGES 3 UIDNEXT 4)``"""
    values: list[object] = []
    for key, number in items:
        values += [Atom(key), number]
    return untagged(Atom("STATUS"), Mailbox(name), List(tuple(values)), utf8=utf8)


VANISHED_RANGES: Final = 500  # UID ranges per VANISHED line (~6 KB, RFC 7162 §4 line length)


def vanished_response(ranges: Sequence[tuple[int, int]], *, earlier: bool) -> list[bytes]:
    """``* VANISHED [(EARLIER)] uid-set`` (RFC 7162 §3.2.10), split over several lines when
    the set is long; nothing for an empty set. ``ranges`` are sorted and disjoint."""
    head = b"* VANISHED (EARLIER) " if earlier else b"* VANISHED "
    return [
        head + SequenceSet(tuple(ranges[i : i + VANISHED_RANGES])).to_bytes() + b"\r\n"
        for i in range(0, len(ranges), VANISHED_RANGES)
    ]


def search_response(numbers: Iterable[int], modseq: int | None = None) -> bytes:
    """``* SEARCH 2 3 7`` (RFC 3501 §7.2.5), with ``(MODSEQ n)`` for CONDSTORE (RFC 7162)."""
    out = bytearray(b"* SEARCH")
    for n in numbers:
        out += b" %d" % n
    if modseq is not None:
        out += b" (MODSEQ %d)" % modseq
    out += b"\r\n"
    return bytes(out)


def esearch_response(
    tag: str,
    *,
    uid: bool,
    minimum: int | None = None,
    maximum: int | None = None,
    count: int | None = None,
    all_numbers: SequenceSet | None = None,
    modseq: int | None = None,
) -> bytes:
    """``* ESEARCH (TAG "a1") UID MIN 2 COUNT 3`` (RFC 4731 §3.1)."""
    items: list[object] = [Atom("ESEARCH"), List((Atom("TAG"), String(tag)))]
    if uid:
        items.append(Atom("UID"))
    for name, value in (("MIN", minimum), ("MAX", maximum)):
        if value is not None:
            items += [Atom(name), value]
    if all_numbers is not None and all_numbers.ranges:
        items += [Atom("ALL"), Seq(all_numbers)]
    if count is not None:
        items += [Atom("COUNT"), count]
    if modseq is not None:
        items += [Atom("MODSEQ"), modseq]
    return untagged(*items)


__all__ = [
    "NIL",
    "Atom",
    "Code",
    "DateTime",
    "FetchName",
    "Flag",
    "Flags",
    "List",
    "Literal",
    "Mailbox",
    "Multipart",
    "Nil",
    "Number",
    "Seq",
    "Simple",
    "String",
    "capability",
    "continuation",
    "continuation_data",
    "encode",
    "esearch_response",
    "fetch",
    "flag_list",
    "format_datetime",
    "list_response",
    "literal_prefix",
    "parse_error",
    "search_response",
    "status_response",
    "tagged",
    "text",
    "untagged",
    "untagged_status",
]
