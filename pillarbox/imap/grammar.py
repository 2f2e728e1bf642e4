"""IMAP tokenizer and grammar primitives (RFC 3501 §9, RFC 9051 §9), pure code without I/O.

A command arrives as one or more lines joined by literals.  The session collects them with
:class:`CommandAssembler`, which tells it after every line whether a literal follows (and how big,
and whether the client waits for ``+ go ahead``), so the reading side stays simple and bounded.
The assembled buffer keeps the wire form (``{N}\\r\\n`` followed by N octets) and :class:`Reader`
walks it with precompiled regular expressions: one ``match`` per token, no per-character loops.

Every malformed input raises :class:`ParseError` and nothing else; it carries the tag when one
was readable so the session can answer ``tag BAD reason`` (or ``* BAD reason`` without a tag).
"""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Final, NoReturn

from pillarbox.imap import utf7

MAX_NUMBER: Final = 0xFFFFFFFF  # number / nz-number are 32-bit unsigned (RFC 3501 §4.2)
MAX_NUMBER64: Final = 0x7FFFFFFFFFFFFFFF  # mod-sequence-value is 63-bit (RFC 7162 §7)


class ParseError(Exception):
    """A syntax error in client input: the session answers ``tag BAD reason``.

    ``tag`` is None when the line had no readable tag (answer ``* BAD reason``).  ``code`` is an
    optional response code without brackets (e.g. ``TOOBIG``, ``BADCHARSET (UTF-8 US-ASCII)``) and
    ``status`` is the status word to answer with: ``BAD`` for syntax, ``NO`` for the few cases the
    RFCs answer with NO (an unsupported CHARSET, RFC 3501 §6.4.4).
    """

    def __init__(
        self, reason: str, tag: str | None = None, *, code: str | None = None, status: str = "BAD"
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tag = tag
        self.code = code
        self.status = status

    def with_tag(self, tag: str | None) -> ParseError:
        """Return this error with ``tag`` filled in (used when a helper raised it untagged)."""
        if self.tag is None:
            self.tag = tag
        return self


class LiteralTooBig(ParseError):
    """A literal announced by the client exceeds the limit (RFC 7888 §4 / RFC 9051 §7.1 TOOBIG).

    For a synchronising literal the client waits for ``+``, so the session answers with the
    tagged error and reads the next command.  For a non-synchronising one (``{N+}``) the client
    is already sending the octets: the session must either discard ``spec.size`` octets or close
    the connection (RFC 7888 §4 recommends ``* BYE`` then close).
    """

    def __init__(self, reason: str, tag: str | None, spec: LiteralSpec) -> None:
        super().__init__(reason, tag, code="TOOBIG", status="NO" if spec.synchronizing else "BAD")
        self.spec = spec


# --- character classes (RFC 3501 §9) -------------------------------------------------------
# atom-specials = "(" / ")" / "{" / SP / CTL / list-wildcards / quoted-specials / resp-specials
_ATOM_RE: Final = re.compile(rb'[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
# ASTRING-CHAR = ATOM-CHAR / resp-specials ("]")
_ASTRING_ATOM_RE: Final = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f-\xff]+')
# After ENABLE UTF8=ACCEPT we also take raw UTF-8 in atoms (Dovecot does; clients do send it).
_ASTRING_ATOM_UTF8_RE: Final = re.compile(rb'[^(){ %*"\\\x00-\x1f\x7f]+')
_LIST_CHAR_UTF8_RE: Final = re.compile(rb'[^(){ "\\\x00-\x1f\x7f]+')
# list-char = ATOM-CHAR / list-wildcards / resp-specials
_LIST_CHAR_RE: Final = re.compile(rb'[^(){ "\\\x00-\x1f\x7f-\xff]+')
# tag = 1*<any ASTRING-CHAR except "+">
_TAG_RE: Final = re.compile(rb'[^(){ %*"\\+\x00-\x1f\x7f-\xff]+')
# Quoted strings: we accept 8-bit octets (RFC 6855 utf8-quoted; Dovecot is lenient too) but
# never CR, LF or NUL; a backslash may only escape DQUOTE or backslash.
_QUOTED_RE: Final = re.compile(rb'"((?:[^"\\\r\n\x00]|\\["\\])*)"')
_QUOTED_ESCAPE_RE: Final = re.compile(rb'\\(["\\])')
_LITERAL_RE: Final = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r\n")
_NUMBER_RE: Final = re.compile(rb"\d{1,20}")
_SEQ_SET_RE: Final = re.compile(
    rb"(?:[1-9]\d{0,9}|\*)(?::(?:[1-9]\d{0,9}|\*))?(?:,(?:[1-9]\d{0,9}|\*)(?::(?:[1-9]\d{0,9}|\*))?)*"
)
_FLAG_RE: Final = re.compile(rb'\\?[^(){ %*"\\\]\x00-\x1f\x7f-\xff]+')
_DATE_RE: Final = re.compile(rb"(\d{1,2})-([A-Za-z]{3})-(\d{4})")
# date-day-fixed is (SP DIGIT) / 2DIGIT; a bare single digit is accepted too (some clients).
_DATE_TIME_RE: Final = re.compile(
    rb'"( ?\d\d?)-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)"'
)
_LITERAL_AT_END_RE: Final = re.compile(rb"(~?)\{(\d{1,20})(\+?)\}\r?\n?\Z")
_COMMAND_NAME_RE: Final = re.compile(rb"[^ ]+ +(?:UID +)?([A-Za-z]+)", re.IGNORECASE)

MONTHS: Final = {
    m: i + 1 for i, m in enumerate(b"JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split())
}

# System flags are case-insensitive (RFC 3501 §2.3.2); we normalise them to the RFC spelling.
SYSTEM_FLAGS: Final = {
    f.upper(): f for f in ("\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft", "\\Recent")
}


# --- literals and command assembly -------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class LiteralSpec:
    """A literal announced at the end of a line: ``{N}``, ``{N+}`` (RFC 7888) or ``~{N}``."""

    size: int
    synchronizing: bool  # True for {N}: the client waits for "+ go ahead" before sending
    binary: bool = False  # ~{N}: literal8 (RFC 3516), may contain NUL


def literal_at_end(line: bytes) -> LiteralSpec | None:
    """Return the literal announced at the end of ``line`` (CRLF optional), or None."""
    m = _LITERAL_AT_END_RE.search(line)
    if m is None:
        return None
    return LiteralSpec(int(m.group(2)), synchronizing=not m.group(3), binary=bool(m.group(1)))


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one command.  ``max_message_literal`` applies to APPEND, ``max_literal`` to the
    literals of every other command (a LOGIN password never needs megabytes)."""

    max_line: int = 65536
    max_literal: int = 65536
    max_message_literal: int = 52428800
    max_literals: int = 64
    max_command: int = 52428800 + 1048576


_LARGE_LITERAL_COMMANDS: Final = frozenset({b"APPEND"})


class CommandAssembler:
    """Collects the lines and literals of one command, enforcing :class:`Limits`.

    Usage by the session (one instance per command, or call :meth:`reset`)::

        asm = CommandAssembler(limits)
        spec = asm.add_line(await read_line())          # may raise ParseError / LiteralTooBig
        while spec is not None:
            if spec.synchronizing:
                send(b"+ go ahead\\r\\n")
            asm.add_literal(await read_exactly(spec.size))
            spec = asm.add_line(await read_line())
        command = commands.parse(asm.finish())
    """

    __slots__ = (
        "_done",
        "_large",
        "_literals",
        "_name",
        "_parts",
        "_pending",
        "_size",
        "_tag",
        "limits",
    )

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.reset()

    def reset(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._literals = 0
        self._pending: LiteralSpec | None = None
        self._done = False
        self._tag: str | None = None
        self._name: str | None = None
        self._large = False

    @property
    def tag(self) -> str | None:
        """The tag of the command being assembled, once its first line was seen."""
        return self._tag

    @property
    def command_name(self) -> str | None:
        """The upper-case command word (``FETCH`` for ``UID FETCH``) once the first line was
        seen: the session can refuse a command not allowed in its state before accepting a
        literal (answer the LiteralSpec with a tagged NO/BAD instead of ``+ go ahead``)."""
        return self._name

    def add_line(self, line: bytes) -> LiteralSpec | None:
        """Add one line (with or without its CRLF); return the literal that follows, if any."""
        if self._done or self._pending is not None:
            raise ParseError("internal: line added out of order", self._tag)
        if line.endswith(b"\n"):
            line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
        if not self._parts:
            self._first_line(line)
        if len(line) > self.limits.max_line:
            raise ParseError("line too long", self._tag)
        spec = literal_at_end(line)
        self._grow(len(line) + 2)
        if spec is None:
            self._parts.append(line)
            self._done = True
            return None
        self._check_literal(spec)
        self._parts.append(line)
        self._parts.append(b"\r\n")
        self._pending = spec
        return spec

    def add_literal(self, data: bytes) -> None:
        """Add the octets of the literal announced by the previous line."""
        spec = self._pending
        if spec is None or len(data) != spec.size:
            raise ParseError("internal: literal does not match its announcement", self._tag)
        if not spec.binary and b"\x00" in data:
            # RFC 3501 §4.3: a literal is CHAR8 (no NUL); only literal8 may carry NUL.
            raise ParseError("NUL octet in literal (use ~{N} for binary data)", self._tag)
        self._parts.append(data)
        self._pending = None

    def finish(self) -> bytes:
        """Return the whole command, literals embedded, without the final CRLF."""
        if not self._done:
            raise ParseError("internal: command is not complete", self._tag)
        return b"".join(self._parts)

    def _first_line(self, line: bytes) -> None:
        m = _TAG_RE.match(line)
        if m is not None and line[m.end() : m.end() + 1] == b" ":
            self._tag = m.group().decode("ascii")
        m = _COMMAND_NAME_RE.match(line)
        if m is not None:
            self._name = m.group(1).upper().decode("ascii")
            self._large = m.group(1).upper() in _LARGE_LITERAL_COMMANDS

    def _grow(self, n: int) -> None:
        self._size += n
        if self._size > self.limits.max_command:
            raise ParseError("command too long", self._tag)

    def _check_literal(self, spec: LiteralSpec) -> None:
        self._literals += 1
        if self._literals > self.limits.max_literals:
            raise LiteralTooBig("too many literals in one command", self._tag, spec)
        limit = self.limits.max_message_literal if self._large else self.limits.max_literal
        if spec.size > limit:
            raise LiteralTooBig(f"literal too big (limit {limit} octets)", self._tag, spec)
        if self._size + spec.size > self.limits.max_command:
            raise LiteralTooBig("command too long", self._tag, spec)
        self._size += spec.size


def is_idle_done(line: bytes) -> bool:
    """True if ``line`` is the ``DONE`` that ends IDLE (RFC 2177; case-insensitive)."""
    return line.rstrip(b"\r\n").upper() == b"DONE"


# --- sequence sets ---------------------------------------------------------------------------
STAR: Final = 0  # how "*" is stored in a SequenceSet range: nz-numbers are never 0


@dataclass(frozen=True, slots=True)
class SequenceSet:
    """A sequence-set or uid-set as the client wrote it, kept compact as ranges.

    ``*`` (the largest number in use) is stored as :data:`STAR` and resolved by the session with
    :meth:`resolve`; ``saved`` is the RFC 5182 ``$`` (the result of the last SEARCH ... SAVE).
    """

    ranges: tuple[tuple[int, int], ...]
    saved: bool = False

    @classmethod
    def from_numbers(cls, numbers: Iterable[int]) -> SequenceSet:
        """Compress numbers (any order, duplicates allowed) into sorted, merged ranges."""
        return cls(tuple(_merge((n, n) for n in numbers)))

    @classmethod
    def from_ranges(cls, ranges: Iterable[tuple[int, int]]) -> SequenceSet:
        return cls(tuple(_merge(ranges)))

    @property
    def uses_star(self) -> bool:
        return any(STAR in r for r in self.ranges)

    def resolve(self, largest: int, *, clip: bool = False) -> list[tuple[int, int]]:
        """Sorted, merged, inclusive ranges with ``*`` replaced by ``largest``.

        ``n:m`` and ``m:n`` are the same set (RFC 3501 §9 seq-range).  With ``clip`` the result
        is limited to ``1..largest`` (what UID commands want: UIDs that do not exist are simply
        not there, RFC 3501 §6.4.8).  ``$`` must be replaced by the session before resolving.
        """
        if self.saved:
            raise ValueError("resolve() on '$': substitute the saved result first")
        pairs = []
        for lo, hi in self.ranges:
            lo = largest if lo == STAR else lo
            hi = largest if hi == STAR else hi
            if lo > hi:
                lo, hi = hi, lo
            if clip:
                lo, hi = max(lo, 1), min(hi, largest)
                if lo > hi:
                    continue
            pairs.append((lo, hi))
        return _merge(pairs)

    def max_number(self, largest: int) -> int:
        """The highest number in the set after resolving ``*`` (0 if empty)."""
        resolved = self.resolve(largest)
        return resolved[-1][1] if resolved else 0

    def matcher(self, largest: int) -> RangeMatcher:
        """A fast membership test over the resolved set."""
        return RangeMatcher(self.resolve(largest))

    def iter(self, largest: int, *, clip: bool = True) -> Iterator[int]:
        """Iterate the numbers in ascending order (clipped to ``1..largest`` by default)."""
        for lo, hi in self.resolve(largest, clip=clip):
            yield from range(lo, hi + 1)

    def to_bytes(self) -> bytes:
        if self.saved:
            return b"$"
        return b",".join(
            _seq_number(lo) if lo == hi else _seq_number(lo) + b":" + _seq_number(hi)
            for lo, hi in self.ranges
        )

    def __str__(self) -> str:
        return self.to_bytes().decode("ascii")


def _seq_number(n: int) -> bytes:
    return b"*" if n == STAR else str(n).encode("ascii")


def _merge(pairs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(pairs):
        if out and lo <= out[-1][1] + 1:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


class RangeMatcher:
    """Membership in sorted, disjoint, inclusive ranges by binary search."""

    __slots__ = ("_his", "_los", "ranges")

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self._los = [lo for lo, _ in ranges]
        self._his = [hi for _, hi in ranges]

    def __contains__(self, n: int) -> bool:
        i = bisect.bisect_right(self._los, n) - 1
        return i >= 0 and n <= self._his[i]

    def __len__(self) -> int:
        return sum(hi - lo + 1 for lo, hi in self.ranges)


# --- the reader ------------------------------------------------------------------------------
class Reader:
    """A cursor over one assembled command; each method consumes one grammar element.

    Methods raise :class:`ParseError` carrying ``self.tag``.  ``utf8`` is True once the client
    has ENABLEd UTF8=ACCEPT (RFC 6855): mailbox names are then UTF-8 instead of modified UTF-7.
    """

    __slots__ = ("buf", "pos", "tag", "utf8")

    def __init__(self, buf: bytes, *, utf8: bool = False, tag: str | None = None) -> None:
        self.buf = buf
        self.pos = 0
        self.tag = tag
        self.utf8 = utf8

    # -- basics
    def fail(self, reason: str) -> NoReturn:
        raise ParseError(reason, self.tag)

    def at_end(self) -> bool:
        return self.pos >= len(self.buf)

    def end(self) -> None:
        if self.pos != len(self.buf):
            self.fail(f"unexpected data at position {self.pos}")

    def peek(self) -> bytes:
        """The next octet (empty at the end)."""
        return self.buf[self.pos : self.pos + 1]

    def sp(self) -> None:
        if self.buf[self.pos : self.pos + 1] != b" ":
            self.fail("expected a space" if self.pos < len(self.buf) else "missing arguments")
        self.pos += 1

    def maybe_sp(self) -> bool:
        if self.buf[self.pos : self.pos + 1] == b" ":
            self.pos += 1
            return True
        return False

    def expect(self, token: bytes) -> None:
        """Consume ``token`` (case-insensitive for letters)."""
        end = self.pos + len(token)
        if self.buf[self.pos : end].upper() != token:
            self.fail(f"expected {token.decode('ascii')!r}")
        self.pos = end

    def maybe(self, token: bytes) -> bool:
        """Consume ``token`` (an upper-case constant) if it comes next, case-insensitively."""
        end = self.pos + len(token)
        if self.buf[self.pos : end].upper() == token:
            self.pos = end
            return True
        return False

    def open(self) -> None:
        if self.buf[self.pos : self.pos + 1] != b"(":
            self.fail("expected '('")
        self.pos += 1

    def close(self) -> None:
        if self.buf[self.pos : self.pos + 1] != b")":
            self.fail("expected ')'")
        self.pos += 1

    def maybe_open(self) -> bool:
        if self.buf[self.pos : self.pos + 1] == b"(":
            self.pos += 1
            return True
        return False

    def maybe_close(self) -> bool:
        if self.buf[self.pos : self.pos + 1] == b")":
            self.pos += 1
            return True
        return False

    # -- atoms and numbers
    def atom(self) -> bytes:
        m = _ATOM_RE.match(self.buf, self.pos)
        if m is None:
            self.fail("expected an atom")
        self.pos = m.end()
        return m.group()

    def keyword(self) -> str:
        """An atom, upper-cased and decoded: command names, search keys, options."""
        return self.atom().upper().decode("ascii")

    def number(self, limit: int = MAX_NUMBER) -> int:
        m = _NUMBER_RE.match(self.buf, self.pos)
        if m is None:
            self.fail("expected a number")
        value = int(m.group())
        if value > limit:
            self.fail("number out of range")
        self.pos = m.end()
        return value

    def nz_number(self, limit: int = MAX_NUMBER) -> int:
        value = self.number(limit)
        if value == 0:
            self.fail("expected a non-zero number")
        return value

    # -- strings
    def quoted(self) -> bytes:
        m = _QUOTED_RE.match(self.buf, self.pos)
        if m is None:
            self.fail("bad quoted string")
        self.pos = m.end()
        value = m.group(1)
        return _QUOTED_ESCAPE_RE.sub(rb"\1", value) if b"\\" in value else value

    def literal(self, *, binary: bool = False) -> bytes:
        m = _LITERAL_RE.match(self.buf, self.pos)
        if m is None:
            self.fail("bad literal")
        if m.group(1) and not binary:
            self.fail("binary literal not allowed here")
        start = m.end()
        end = start + int(m.group(2))
        if end > len(self.buf):
            self.fail("literal shorter than announced")
        self.pos = end
        return self.buf[start:end]

    def string(self) -> bytes:
        c = self.buf[self.pos : self.pos + 1]
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        self.fail("expected a string")

    def astring(self) -> bytes:
        c = self.buf[self.pos : self.pos + 1]
        if c == b'"':
            return self.quoted()
        if c == b"{":
            return self.literal()
        m = (_ASTRING_ATOM_UTF8_RE if self.utf8 else _ASTRING_ATOM_RE).match(self.buf, self.pos)
        if m is None:
            self.fail("expected an atom or string")
        self.pos = m.end()
        return m.group()

    def nstring(self) -> bytes | None:
        if self.maybe(b"NIL"):
            return None
        return self.string()

    def text_astring(self) -> str:
        """An astring decoded as UTF-8 (user names, passwords, search strings)."""
        return self.decode_utf8(self.astring())

    def decode_utf8(self, value: bytes) -> str:
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            self.fail("string is not valid UTF-8")

    # -- mailboxes
    def mailbox(self) -> str:
        """A mailbox name: modified UTF-7 (or UTF-8 after ENABLE UTF8=ACCEPT), INBOX normalised."""
        return self.decode_mailbox(self.astring())

    def list_mailbox(self) -> str:
        """A LIST/LSUB pattern: like a mailbox, plus the wildcards ``%`` and ``*``."""
        c = self.buf[self.pos : self.pos + 1]
        if c == b'"' or c == b"{":
            raw = self.string()
        else:
            m = (_LIST_CHAR_UTF8_RE if self.utf8 else _LIST_CHAR_RE).match(self.buf, self.pos)
            if m is None:
                self.fail("expected a mailbox pattern")
            self.pos = m.end()
            raw = m.group()
        return self.decode_mailbox(raw, normalise=False)

    def decode_mailbox(self, raw: bytes, *, normalise: bool = True) -> str:
        if self.utf8:
            name = self.decode_utf8(raw)
        else:
            try:
                name = utf7.decode(raw)
            except utf7.Utf7Error as e:
                self.fail(f"bad mailbox name: {e}")
        if any(ord(ch) < 0x20 or ch == "\x7f" for ch in name):
            self.fail("mailbox name contains control characters")
        return normalise_inbox(name) if normalise else name

    # -- flags, dates, sequence sets
    def flag(self) -> str:
        """A flag: ``\\System`` (normalised case) or a keyword atom."""
        m = _FLAG_RE.match(self.buf, self.pos)
        if m is None:
            self.fail("expected a flag")
        self.pos = m.end()
        flag = m.group().decode("ascii")
        if flag[0] == "\\":
            return SYSTEM_FLAGS.get(flag.upper(), flag)
        return flag

    def flag_list(self) -> tuple[str, ...]:
        """``"(" [flag *(SP flag)] ")"``"""
        self.open()
        if self.maybe_close():
            return ()
        flags = [self.flag()]
        while self.maybe_sp():
            flags.append(self.flag())
        self.close()
        return tuple(flags)

    def flags_or_list(self) -> tuple[str, ...]:
        """STORE accepts a parenthesised flag list or bare flags separated by spaces."""
        if self.peek() == b"(":
            return self.flag_list()
        flags = [self.flag()]
        while self.maybe_sp():
            flags.append(self.flag())
        return tuple(flags)

    def date(self) -> dt.date:
        """``date = date-text / DQUOTE date-text DQUOTE`` (SEARCH), e.g. ``1-Feb-1994``."""
        quoted = self.buf[self.pos : self.pos + 1] == b'"'
        m = _DATE_RE.match(self.buf, self.pos + quoted)
        if m is None:
            self.fail("bad date (expected d-Mon-yyyy)")
        end = m.end()
        if quoted:
            if self.buf[end : end + 1] != b'"':
                self.fail("bad date (unterminated quote)")
            end += 1
        month = MONTHS.get(m.group(2).upper())
        if month is None:
            self.fail("bad month name")
        try:
            value = dt.date(int(m.group(3)), month, int(m.group(1)))
        except ValueError:
            self.fail("no such date")
        self.pos = end
        return value

    def date_time(self) -> dt.datetime:
        """``date-time`` (APPEND), e.g. ``"17-Jul-1996 02:44:25 -0700"``: an aware datetime."""
        m = _DATE_TIME_RE.match(self.buf, self.pos)
        if m is None:
            self.fail('bad date-time (expected "dd-Mon-yyyy hh:mm:ss +zzzz")')
        day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
        month = MONTHS.get(mon.upper())
        if month is None:
            self.fail("bad month name")
        try:
            offset = dt.timedelta(hours=int(zh), minutes=int(zm))
            tz = dt.timezone(-offset if sign == b"-" else offset)
            value = dt.datetime(
                int(year), month, int(day.strip()), int(hh), int(mm), int(ss), tzinfo=tz
            )
        except ValueError:
            self.fail("no such date-time")
        self.pos = m.end()
        return value

    def sequence_set(self, *, allow_saved: bool = True) -> SequenceSet:
        if self.buf[self.pos : self.pos + 1] == b"$":
            if not allow_saved:
                self.fail("'$' not allowed here")
            self.pos += 1
            return SequenceSet((), saved=True)
        m = _SEQ_SET_RE.match(self.buf, self.pos)
        if m is None:
            self.fail("bad sequence set")
        self.pos = m.end()
        return parse_sequence_set_token(m.group(), self.tag)

    # -- generic extension values (RFC 4466 tagged-ext-val), for parameters we tolerate
    def ext_value(self, depth: int = 0) -> object:
        """Parse and return a generic value: number, sequence set, astring or nested list."""
        if depth > 8:
            self.fail("parameter nested too deeply")
        if self.maybe_open():
            items: list[object] = []
            if not self.maybe_close():
                items.append(self.ext_value(depth + 1))
                while self.maybe_sp():
                    items.append(self.ext_value(depth + 1))
                self.close()
            return tuple(items)
        for pattern in (_NUMBER_RE, _SEQ_SET_RE):
            m = pattern.match(self.buf, self.pos)
            if m is not None and self.buf[m.end() : m.end() + 1] in (b" ", b")", b""):
                token = m.group()
                if pattern is _NUMBER_RE:
                    return self.number(MAX_NUMBER64)
                self.pos = m.end()
                return parse_sequence_set_token(token, self.tag)
        return self.astring()


_seq_cache: dict[bytes, SequenceSet] = {}


def parse_sequence_set_token(token: bytes, tag: str | None = None) -> SequenceSet:
    """Split a token already matched by the sequence-set regex into ranges (memoised: clients
    repeat ``1:*`` and friends constantly, and the result is immutable)."""
    cached = _seq_cache.get(token)
    if cached is not None:
        return cached
    ranges: list[tuple[int, int]] = []
    for item in token.split(b","):
        lo, sep, hi = item.partition(b":")
        a = STAR if lo == b"*" else int(lo)
        b = a if not sep else (STAR if hi == b"*" else int(hi))
        if a > MAX_NUMBER or b > MAX_NUMBER:
            raise ParseError("sequence number out of range", tag)
        ranges.append((a, b))
    result = SequenceSet(tuple(ranges))
    if len(token) <= 64:
        if len(_seq_cache) >= 1024:
            _seq_cache.clear()
        _seq_cache[token] = result
    return result


def normalise_inbox(name: str) -> str:
    """INBOX is case-insensitive (RFC 3501 §5.1); so is its prefix before our ``/`` separator."""
    if len(name) >= 5 and name[:5].upper() == "INBOX" and (len(name) == 5 or name[5] == "/"):
        return "INBOX" + name[5:]
    return name


def parse_sasl_response(line: bytes) -> bytes | None:
    """A client's AUTHENTICATE continuation line: base64 data, or None for ``*`` (cancel)."""
    import binascii

    line = line.rstrip(b"\r\n")
    if line == b"*":
        return None
    try:
        return binascii.a2b_base64(line, strict_mode=True) if line else b""
    except (binascii.Error, ValueError) as e:
        raise ParseError(f"bad base64: {e}") from None
