"""FETCH data items (RFC 3501 §6.4.5, RFC 9051 §6.4.5, RFC 3516 BINARY, RFC 7162 MODSEQ).

The parser turns ``(FLAGS BODY.PEEK[HEADER.FIELDS (From To)]<0.2048>)`` into a tuple of typed
attributes.  Each attribute knows the name it must be echoed under in the FETCH response
(:func:`response_name`): RFC 3501 §7.4.2 wants the section spec repeated, the partial reduced to
``<origin>``, and ``.PEEK`` dropped.  Attribute lists repeat a lot (clients send the same FETCH
over and over), so parsed lists are memoised by their raw bytes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from typing import Final

from pillarbox.imap.grammar import MAX_NUMBER, ParseError, Reader


class Simple(Enum):
    """The attributes that take no arguments; the value is the response item name."""

    FLAGS = "FLAGS"
    INTERNALDATE = "INTERNALDATE"
    RFC822_SIZE = "RFC822.SIZE"
    ENVELOPE = "ENVELOPE"
    BODY = "BODY"  # non-extensible BODYSTRUCTURE
    BODYSTRUCTURE = "BODYSTRUCTURE"
    UID = "UID"
    MODSEQ = "MODSEQ"  # RFC 7162 §3.1.4
    RFC822 = "RFC822"  # = BODY[], sets \Seen
    RFC822_HEADER = "RFC822.HEADER"  # = BODY.PEEK[HEADER]
    RFC822_TEXT = "RFC822.TEXT"  # = BODY[TEXT], sets \Seen


class SectionText(Enum):
    """``section-msgtext`` / ``section-text`` (RFC 3501 §9); None in :class:`Section` = whole."""

    HEADER = "HEADER"
    HEADER_FIELDS = "HEADER.FIELDS"
    HEADER_FIELDS_NOT = "HEADER.FIELDS.NOT"
    TEXT = "TEXT"
    MIME = "MIME"  # only after a part number


@dataclass(frozen=True, slots=True)
class Section:
    """``BODY[<part>.<text>]``: ``part`` is the MIME part path (empty = the whole message)."""

    part: tuple[int, ...] = ()
    text: SectionText | None = None
    fields: tuple[str, ...] = ()  # HEADER.FIELDS(.NOT) names as the client wrote them (echoed)

    def spec(self) -> bytes:
        """The section-spec between the brackets, as echoed in the response."""
        out = ".".join(str(p) for p in self.part).encode("ascii")
        if self.text is not None:
            out += (b"." if out else b"") + self.text.value.encode("ascii")
        if self.fields:
            out += b" (" + b" ".join(f.encode("ascii") for f in self.fields) + b")"
        return out


@dataclass(frozen=True, slots=True)
class BodySection:
    """``BODY[section]<partial>`` or ``BODY.PEEK[...]``; partial is (origin, length)."""

    section: Section
    partial: tuple[int, int] | None = None
    peek: bool = False


@dataclass(frozen=True, slots=True)
class Binary:
    """``BINARY[part]<partial>`` / ``BINARY.PEEK`` (RFC 3516 §4.2): the decoded part content."""

    part: tuple[int, ...]
    partial: tuple[int, int] | None = None
    peek: bool = False


@dataclass(frozen=True, slots=True)
class BinarySize:
    """``BINARY.SIZE[part]`` (RFC 3516 §4.2)."""

    part: tuple[int, ...]


FetchAtt = Simple | BodySection | Binary | BinarySize

MACROS: Final[dict[str, tuple[FetchAtt, ...]]] = {
    # RFC 3501 §6.4.5: macros are only valid alone, never inside a list.
    "ALL": (Simple.FLAGS, Simple.INTERNALDATE, Simple.RFC822_SIZE, Simple.ENVELOPE),
    "FAST": (Simple.FLAGS, Simple.INTERNALDATE, Simple.RFC822_SIZE),
    "FULL": (Simple.FLAGS, Simple.INTERNALDATE, Simple.RFC822_SIZE, Simple.ENVELOPE, Simple.BODY),
}

_SIMPLE_BY_NAME: Final = {s.value: s for s in Simple if s is not Simple.BODY}
_NAME_RE: Final = re.compile(rb"[A-Za-z0-9.]+")
_PART_RE: Final = re.compile(rb"[1-9]\d{0,8}(?:\.[1-9]\d{0,8})*")
_PARTIAL_RE: Final = re.compile(rb"<(\d{1,10})\.(\d{1,10})>")
_HEADER_NAME_RE: Final = re.compile(rb"[\x21-\x39\x3b-\x7e]+")  # RFC 5322 ftext


def sets_seen(att: FetchAtt) -> bool:
    """Does fetching this attribute set ``\\Seen`` (RFC 3501 §6.4.5)?"""
    if isinstance(att, BodySection | Binary):
        return not att.peek
    return att is Simple.RFC822 or att is Simple.RFC822_TEXT


def response_name(att: FetchAtt) -> bytes:
    """The item name in the FETCH response, e.g. ``BODY[HEADER.FIELDS (FROM)]<0>``."""
    if isinstance(att, Simple):
        return att.value.encode("ascii")
    if isinstance(att, BodySection):
        name = b"BODY[" + att.section.spec() + b"]"
        return name + _origin(att.partial)
    if isinstance(att, Binary):
        return b"BINARY[" + _part_spec(att.part) + b"]" + _origin(att.partial)
    return b"BINARY.SIZE[" + _part_spec(att.part) + b"]"


def _origin(partial: tuple[int, int] | None) -> bytes:
    return b"" if partial is None else b"<" + str(partial[0]).encode("ascii") + b">"


def _part_spec(part: tuple[int, ...]) -> bytes:
    return ".".join(str(p) for p in part).encode("ascii")


_cache: dict[bytes, tuple[tuple[FetchAtt, ...], int]] = {}
_CACHE_MAX: Final = 512


def parse_fetch_atts(r: Reader) -> tuple[FetchAtt, ...]:
    """Parse ``"ALL" / "FULL" / "FAST" / fetch-att / "(" fetch-att *(SP fetch-att) ")"``."""
    if r.peek() == b"(":
        # Memoise by the rest of the command: same bytes, same parse, and the FETCH
        # modifiers that may follow are simply not consumed.  Literal-free input only.
        rest = r.buf[r.pos :]
        cached = _cache.get(rest)
        if cached is not None:
            r.pos += cached[1]
            return cached[0]
        start = r.pos
        r.open()
        atts = [parse_fetch_att(r)]
        while r.maybe_sp():
            atts.append(parse_fetch_att(r))
        r.close()
        result = tuple(atts)
        if len(rest) <= 512 and b"{" not in rest:
            if len(_cache) >= _CACHE_MAX:
                _cache.clear()
            _cache[rest] = (result, r.pos - start)
        return result
    m = _NAME_RE.match(r.buf, r.pos)
    if m is not None and (macro := MACROS.get(m.group().upper().decode("ascii"))) is not None:
        r.pos = m.end()
        return macro
    return (parse_fetch_att(r),)


def parse_fetch_att(r: Reader) -> FetchAtt:
    m = _NAME_RE.match(r.buf, r.pos)
    if m is None:
        r.fail("expected a fetch attribute")
    name = m.group().upper().decode("ascii")
    r.pos = m.end()
    bracket = r.peek() == b"["
    if name == "BODY" or name == "BODY.PEEK":
        if not bracket:
            if name == "BODY.PEEK":
                r.fail("BODY.PEEK needs a section")
            return Simple.BODY
        section = _section(r)
        return BodySection(section, _partial(r), peek=name == "BODY.PEEK")
    if name in ("BINARY", "BINARY.PEEK", "BINARY.SIZE"):
        if not bracket:
            r.fail(f"{name} needs a section")
        part = _binary_part(r)
        if name == "BINARY.SIZE":
            return BinarySize(part)
        return Binary(part, _partial(r), peek=name == "BINARY.PEEK")
    simple = _SIMPLE_BY_NAME.get(name)
    if simple is None or bracket:
        r.fail(f"unknown fetch attribute {name}")
    return simple


def _section(r: Reader) -> Section:
    """``"[" [section-spec] "]"``"""
    r.expect(b"[")
    if r.peek() == b"]":
        r.pos += 1
        return Section()
    part: tuple[int, ...] = ()
    m = _PART_RE.match(r.buf, r.pos)
    if m is not None:
        part = tuple(int(p) for p in m.group().split(b"."))
        r.pos = m.end()
        if r.peek() == b"]":
            r.pos += 1
            return Section(part)
        r.expect(b".")
    m = _NAME_RE.match(r.buf, r.pos)
    if m is None:
        r.fail("bad section")
    r.pos = m.end()
    try:
        text = SectionText(m.group().upper().decode("ascii"))
    except ValueError:
        r.fail("bad section")
    if text is SectionText.MIME and not part:
        r.fail("MIME needs a part number")
    fields: tuple[str, ...] = ()
    if text in (SectionText.HEADER_FIELDS, SectionText.HEADER_FIELDS_NOT):
        r.sp()
        fields = _header_list(r)
    r.expect(b"]")
    return Section(part, text, fields)


def _header_list(r: Reader) -> tuple[str, ...]:
    """``header-list = "(" header-fld-name *(SP header-fld-name) ")"`` (astrings)."""
    r.open()
    names = [_header_name(r)]
    while r.maybe_sp():
        names.append(_header_name(r))
    r.close()
    return tuple(names)


def _header_name(r: Reader) -> str:
    raw = r.astring()
    # The name is echoed back as an atom, so it must be a valid RFC 5322 field name.
    if not _HEADER_NAME_RE.fullmatch(raw) or _ASTRING_UNSAFE.search(raw):
        r.fail("bad header field name")
    return raw.decode("ascii")


_ASTRING_UNSAFE: Final = re.compile(rb'[(){ %*"\\]')


def _binary_part(r: Reader) -> tuple[int, ...]:
    r.expect(b"[")
    if r.peek() == b"]":
        r.pos += 1
        return ()
    m = _PART_RE.match(r.buf, r.pos)
    if m is None:
        r.fail("bad BINARY section (expected part numbers)")
    r.pos = m.end()
    r.expect(b"]")
    return tuple(int(p) for p in m.group().split(b"."))


def _partial(r: Reader) -> tuple[int, int] | None:
    if r.peek() != b"<":
        return None
    m = _PARTIAL_RE.match(r.buf, r.pos)
    if m is None:
        r.fail("bad partial (expected <origin.length>)")
    origin, length = int(m.group(1)), int(m.group(2))
    if origin > MAX_NUMBER or length > MAX_NUMBER or length == 0:
        r.fail("bad partial range")
    r.pos = m.end()
    return origin, length


__all__ = [
    "MACROS",
    "Binary",
    "BinarySize",
    "BodySection",
    "FetchAtt",
    "ParseError",
    "Section",
    "SectionText",
    "Simple",
    "parse_fetch_att",
    "parse_fetch_atts",
    "response_name",
    "sets_seen",
]
