"""SEARCH criteria as a typed tree (RFC 3501 §6.4.4, RFC 9051 §6.4.4, RFC 7162, RFC 5032).

The parser normalises the many RFC spellings to a handful of node types so the evaluator in
``imap/search.py`` stays small: ``ANSWERED``/``UNSEEN``/``KEYWORD x`` are all :class:`FlagKey`,
``FROM``/``SUBJECT``/``HEADER x`` are all :class:`HeaderKey`, ``NEW`` is ``RECENT UNSEEN``,
``SENTBEFORE`` and ``BEFORE`` are one :class:`DateKey`.  A list of keys is an :class:`AndKey`.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pillarbox.imap.grammar import (
    MAX_NUMBER64,
    ParseError,
    Reader,
    SequenceSet,
)

MAX_DEPTH: Final = 64  # NOT NOT NOT ... and nested parentheses are bounded
SUPPORTED_CHARSETS: Final = ("UTF-8", "US-ASCII")
BADCHARSET_CODE: Final = "BADCHARSET (UTF-8 US-ASCII)"


class DateField(Enum):
    INTERNAL = "internal"  # BEFORE/ON/SINCE: the internal date (RFC 3501 §2.3.3)
    SENT = "sent"  # SENTBEFORE/SENTON/SENTSINCE: the Date: header


class DateOp(Enum):
    BEFORE = "before"
    ON = "on"
    SINCE = "since"  # on or after


@dataclass(frozen=True, slots=True)
class AllKey:
    pass


@dataclass(frozen=True, slots=True)
class FlagKey:
    """The message has (``present``) or lacks the flag or keyword."""

    flag: str
    present: bool = True


@dataclass(frozen=True, slots=True)
class HeaderKey:
    """``field`` contains ``value`` (case-insensitive substring; empty = field present)."""

    field: str
    value: str


@dataclass(frozen=True, slots=True)
class BodyKey:
    value: str


@dataclass(frozen=True, slots=True)
class TextKey:
    """Header or body contains ``value``."""

    value: str


@dataclass(frozen=True, slots=True)
class DateKey:
    field: DateField
    op: DateOp
    date: dt.date  # dates compare without time or zone (RFC 3501 §6.4.4)


@dataclass(frozen=True, slots=True)
class SizeKey:
    """RFC822.SIZE larger than (``larger``) or smaller than ``size``."""

    larger: bool
    size: int


@dataclass(frozen=True, slots=True)
class SeqKey:
    set: SequenceSet


@dataclass(frozen=True, slots=True)
class UidKey:
    set: SequenceSet


@dataclass(frozen=True, slots=True)
class ModSeqKey:
    """MODSEQ (RFC 7162 §3.1.5): mod-sequence >= ``modseq``; ``entry`` is the optional flag."""

    modseq: int
    entry: str | None = None


@dataclass(frozen=True, slots=True)
class WithinKey:
    """YOUNGER/OLDER n (RFC 5032): internal date within / older than ``seconds`` from now."""

    younger: bool
    seconds: int


@dataclass(frozen=True, slots=True)
class NotKey:
    key: SearchKey


@dataclass(frozen=True, slots=True)
class OrKey:
    left: SearchKey
    right: SearchKey


@dataclass(frozen=True, slots=True)
class AndKey:
    keys: tuple[SearchKey, ...]


SearchKey = (
    AllKey
    | FlagKey
    | HeaderKey
    | BodyKey
    | TextKey
    | DateKey
    | SizeKey
    | SeqKey
    | UidKey
    | ModSeqKey
    | WithinKey
    | NotKey
    | OrKey
    | AndKey
)

_KEY_NAME_RE: Final = re.compile(rb"[A-Za-z0-9.\-]+")

_FLAG_KEYS: Final[dict[str, SearchKey]] = {
    "ANSWERED": FlagKey("\\Answered"),
    "DELETED": FlagKey("\\Deleted"),
    "DRAFT": FlagKey("\\Draft"),
    "FLAGGED": FlagKey("\\Flagged"),
    "RECENT": FlagKey("\\Recent"),
    "SEEN": FlagKey("\\Seen"),
    "UNANSWERED": FlagKey("\\Answered", False),
    "UNDELETED": FlagKey("\\Deleted", False),
    "UNDRAFT": FlagKey("\\Draft", False),
    "UNFLAGGED": FlagKey("\\Flagged", False),
    "UNSEEN": FlagKey("\\Seen", False),
    "OLD": FlagKey("\\Recent", False),
    "NEW": AndKey((FlagKey("\\Recent"), FlagKey("\\Seen", False))),
    "ALL": AllKey(),
}
_HEADER_KEYS: Final = {"BCC": "Bcc", "CC": "Cc", "FROM": "From", "SUBJECT": "Subject", "TO": "To"}
_DATE_KEYS: Final = {
    "BEFORE": (DateField.INTERNAL, DateOp.BEFORE),
    "ON": (DateField.INTERNAL, DateOp.ON),
    "SINCE": (DateField.INTERNAL, DateOp.SINCE),
    "SENTBEFORE": (DateField.SENT, DateOp.BEFORE),
    "SENTON": (DateField.SENT, DateOp.ON),
    "SENTSINCE": (DateField.SENT, DateOp.SINCE),
}


@dataclass(frozen=True, slots=True)
class SearchProgram:
    charset: str | None
    key: SearchKey


def parse_search_program(r: Reader) -> SearchProgram:
    """``["CHARSET" SP charset SP] search-key *(SP search-key)`` up to the end of the command."""
    charset = None
    if r.maybe(b"CHARSET "):
        charset = r.astring().decode("ascii", "replace").upper()
        if charset not in SUPPORTED_CHARSETS:
            raise ParseError(
                f"unsupported charset {charset[:40]}", r.tag, code=BADCHARSET_CODE, status="NO"
            )
        r.sp()
    keys = [parse_search_key(r, 0)]
    while r.maybe_sp():
        keys.append(parse_search_key(r, 0))
    return SearchProgram(charset, keys[0] if len(keys) == 1 else AndKey(tuple(keys)))


def parse_search_key(r: Reader, depth: int) -> SearchKey:
    if depth > MAX_DEPTH:
        r.fail("search criteria nested too deeply")
    c = r.peek()
    if c == b"(":
        r.pos += 1
        keys = [parse_search_key(r, depth + 1)]
        while r.maybe_sp():
            keys.append(parse_search_key(r, depth + 1))
        r.close()
        return keys[0] if len(keys) == 1 else AndKey(tuple(keys))
    if c == b"$" or (c and c in b"0123456789*"):
        return SeqKey(r.sequence_set())
    m = _KEY_NAME_RE.match(r.buf, r.pos)
    if m is None:
        r.fail("expected a search key")
    name = m.group().upper().decode("ascii")
    r.pos = m.end()
    simple = _FLAG_KEYS.get(name)
    if simple is not None:
        return simple
    parser = _ARG_KEYS.get(name)
    if parser is None:
        r.fail(f"unknown search key {name}")
    r.sp()
    return parser(r, name, depth)


def _search_string(r: Reader) -> str:
    return r.decode_utf8(r.astring())


def _header(r: Reader, name: str, depth: int) -> SearchKey:
    if name == "HEADER":
        field = r.astring()
        if not field or re.search(rb"[\x00-\x20\x7f-\xff:]", field):
            r.fail("bad header field name")
        r.sp()
        return HeaderKey(field.decode("ascii"), _search_string(r))
    return HeaderKey(_HEADER_KEYS[name], _search_string(r))


def _date(r: Reader, name: str, depth: int) -> SearchKey:
    field, op = _DATE_KEYS[name]
    return DateKey(field, op, r.date())


def _keyword(r: Reader, name: str, depth: int) -> SearchKey:
    flag = r.flag()
    return FlagKey(flag, present=name == "KEYWORD")


def _size(r: Reader, name: str, depth: int) -> SearchKey:
    return SizeKey(name == "LARGER", r.number(MAX_NUMBER64))


def _uid(r: Reader, name: str, depth: int) -> SearchKey:
    return UidKey(r.sequence_set())


def _not(r: Reader, name: str, depth: int) -> SearchKey:
    return NotKey(parse_search_key(r, depth + 1))


def _or(r: Reader, name: str, depth: int) -> SearchKey:
    left = parse_search_key(r, depth + 1)
    r.sp()
    return OrKey(left, parse_search_key(r, depth + 1))


def _body(r: Reader, name: str, depth: int) -> SearchKey:
    value = _search_string(r)
    return BodyKey(value) if name == "BODY" else TextKey(value)


def _modseq(r: Reader, name: str, depth: int) -> SearchKey:
    # MODSEQ [SP entry-name SP entry-type-req] SP mod-sequence-valzer (RFC 7162 §3.1.5)
    entry = None
    if r.peek() == b'"':
        entry = r.decode_utf8(r.quoted())
        r.sp()
        kind = r.keyword()
        if kind not in ("PRIV", "SHARED", "ALL"):
            r.fail("bad MODSEQ entry type")
        r.sp()
    return ModSeqKey(r.number(MAX_NUMBER64), entry)


def _within(r: Reader, name: str, depth: int) -> SearchKey:
    return WithinKey(name == "YOUNGER", r.nz_number())


_ARG_KEYS: Final[dict[str, Callable[[Reader, str, int], SearchKey]]] = {
    **dict.fromkeys(_HEADER_KEYS, _header),
    "HEADER": _header,
    **dict.fromkeys(_DATE_KEYS, _date),
    "KEYWORD": _keyword,
    "UNKEYWORD": _keyword,
    "LARGER": _size,
    "SMALLER": _size,
    "UID": _uid,
    "NOT": _not,
    "OR": _or,
    "BODY": _body,
    "TEXT": _body,
    "MODSEQ": _modseq,
    "YOUNGER": _within,
    "OLDER": _within,
}

# RFC 4731 ESEARCH return options, plus SAVE from RFC 5182.
RETURN_OPTIONS: Final = frozenset({"MIN", "MAX", "ALL", "COUNT", "SAVE"})


def parse_return_options(r: Reader) -> frozenset[str]:
    """``"RETURN" SP "(" [opt *(SP opt)] ")"``; an empty list means ALL (RFC 4731 §3.1)."""
    r.open()
    opts: set[str] = set()
    if not r.maybe_close():
        opts.add(r.keyword())
        while r.maybe_sp():
            opts.add(r.keyword())
        r.close()
    unknown = opts - RETURN_OPTIONS
    if unknown:
        r.fail(f"unknown RETURN option {sorted(unknown)[0]}")
    return frozenset(opts) or frozenset({"ALL"})


def uses_saved(key: SearchKey) -> bool:
    """Does the program refer to ``$`` (RFC 5182 §2.1)?"""
    if isinstance(key, SeqKey | UidKey):
        return key.set.saved
    if isinstance(key, NotKey):
        return uses_saved(key.key)
    if isinstance(key, OrKey):
        return uses_saved(key.left) or uses_saved(key.right)
    if isinstance(key, AndKey):
        return any(uses_saved(k) for k in key.keys)
    return False


__all__ = [
    "BADCHARSET_CODE",
    "AllKey",
    "AndKey",
    "BodyKey",
    "DateField",
    "DateKey",
    "DateOp",
    "FlagKey",
    "HeaderKey",
    "ModSeqKey",
    "NotKey",
    "OrKey",
    "SearchKey",
    "SearchProgram",
    "SeqKey",
    "SizeKey",
    "TextKey",
    "UidKey",
    "WithinKey",
    "parse_return_options",
    "parse_search_key",
    "parse_search_program",
    "uses_saved",
]
